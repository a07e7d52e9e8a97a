"""Which rows need `weights: random` where ImageNet weights cannot be fetched (no internet).

`tlrepro offline-flags` prints `-S ++<key>=random` for every row of every study (and pretraining entry)
whose backbone has no file in $IMAGENET_WEIGHTS_DIR, so an offline run is one explicit command:

    dvc exp run $(tlrepro offline-flags)

Random initialisation stays a setting of the experiment, visible in its params and headlined in reports.
"""

from __future__ import annotations

import os
from pathlib import Path

from tlrepro.core import config
from tlrepro.core.errors import UserError
from tlrepro.modeling.backbones import backbone_spec


def missing_weights(params: config.Params, folder: Path) -> list[str]:
    """params keys (dotted) of rows with ImageNet weights that `folder` cannot provide."""
    def unavailable(row: config.Row) -> bool:
        name = backbone_spec(row.backbone).weights_file
        return row.weights == "imagenet" and (name is None or not (folder / name(row.image_size)).is_file())

    keys = [f"studies.{study_id}.rows.{row.name}.weights" for study_id, study in params.studies.items()
            for row in study.all_rows() if not row.init_from and unavailable(row)]
    return keys + [f"pretraining.{key}.model.weights" for key, entry in params.pretraining.items()
                   if unavailable(entry.row(key))]


def offline_flags() -> str:
    folder = os.environ.get("IMAGENET_WEIGHTS_DIR")
    if not folder:
        raise UserError("IMAGENET_WEIGHTS_DIR is not set: offline, point it at a folder of Keras weight files "
                        "(e.g. ../shared/keras-weights); online, no flags are needed.")
    # `++` (add or override): a row usually inherits `weights` from the study's defaults, so the key is absent
    return " ".join(f"-S ++{key}=random" for key in missing_weights(config.load_params(), Path(folder)))

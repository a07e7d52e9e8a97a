"""Derived datasets (params `derived`): made once from a prepared dataset by a DVC stage of their own.

Today the one transform is stain normalization (tlrepro.data.stain): every image of the source's index is
normalized to a reference image of that dataset and written as PNG under data/derived/<key>/, and
data/index/<key>.csv indexes the results (labels, patients and source splits carried over, hashes of the
new pixels, `source_path` pointing at the original). Images where the method fails keep their original
pixels; data/index/<key>.stain.csv lists every image with what happened to it, and data/index/<key>.warnings.json
counts those fallbacks beside the source dataset's own warnings (tlrepro.data.sanity).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from tlrepro.core import config, fileio, paths
from tlrepro.core.errors import UserError
from tlrepro.data import sanity
from tlrepro.data.images import ImageInfo, inspect_image, load_rgb
from tlrepro.data.index import drop_duplicates, read_index, write_index


def stain_report_csv(key: str) -> Path:
    return paths.INDEX / f"{key}.stain.csv"


def reference_image(index: pd.DataFrame, name: str, where: str) -> np.ndarray:
    """The reference image, named by its file name, from the source dataset's index."""
    match = index[index["path"].map(lambda p: PurePosixPath(p).name) == name]
    if match.empty:
        raise UserError(f"{where}.reference is {name!r}, which is not an image of the source dataset: name one "
                        f"of its files (e.g. {PurePosixPath(index['path'].iloc[0]).name}).")
    return np.asarray(load_rgb(paths.PROJECT_ROOT / match["path"].iloc[0]))


def fitted_normalizer(params: config.Params, key: str) -> Any:
    """The stain normalizer of derived dataset `key`, fitted to its reference image (a UserError if unusable)."""
    from tlrepro.data.stain import StainNormalizer

    entry = params.derived[key]
    where = f"derived.{key}.stain"
    try:
        return StainNormalizer(entry.stain.method, reference_image(read_index(entry.source), entry.stain.reference, where))
    except ValueError as exc:
        raise UserError(f"{where}: {exc}: choose another reference image.") from None


def input_steps(dataset: str) -> list[dict[str, Any]]:
    """What a model trained on `dataset` needs done to a raw image before its own layers, as its card records
    it: for a stain-normalized derived dataset, the normalizer with its fitted reference (derive wrote it into
    data/index/<key>.derived.json); else nothing."""
    record = paths.derived_json(dataset)
    if not record.is_file():
        return []
    return [fileio.read_json(record, "derived dataset record")["before_model"]]


def derive_dataset(key: str) -> pd.DataFrame:
    """Write data/derived/<key>/ and data/index/<key>.csv (+ .rejected, .duplicates, .stain); returns the index."""
    from tlrepro.data.stain import normalize_files

    params = config.load_params()
    if key not in params.derived:
        raise UserError(f"`{key}` is not a derived dataset: params.yaml `derived` has "
                        f"{', '.join(params.derived) or 'none'}.")
    entry = params.derived[key]
    source_index = read_index(entry.source)
    inherited = sanity.read_warnings(entry.source)
    normalizer = fitted_normalizer(params, key)
    source_root = paths.raw_dir(entry.source)
    target = paths.derived_dir(key)
    with fileio.atomic_dir(target) as tmp:
        pairs = []
        for path in source_index["path"]:
            relative = Path(path).relative_to(paths.relative(source_root))
            pairs.append((paths.PROJECT_ROOT / path, tmp / relative.with_suffix(".png")))
        report = normalize_files(pairs, normalizer, workers=min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            facts = list(tqdm(pool.map(lambda r: inspect_image(r["target"]) if r["target"] else "not written",
                                       report), total=len(report), desc="index", unit="img", disable=None))
    rows, rejected = [], []
    for source_row, result, info in zip(source_index.to_dict("records"), report, facts, strict=True):
        final = paths.relative(target / Path(result["target"]).relative_to(tmp)) if result["target"] else ""
        if isinstance(info, ImageInfo):
            rows.append({**source_row, "path": final, "source_path": source_row["path"], **asdict(info)})
        else:
            rejected.append({"path": source_row["path"], "reason": result["reason"] or str(info)})
    index = pd.DataFrame(rows, columns=[*source_index.columns, "source_path"])
    index, duplicates = drop_duplicates(index)
    rejected = pd.DataFrame(rejected, columns=["path", "reason"])
    stain = pd.DataFrame([{"source": paths.relative(r["source"]), "normalized": r["normalized"],
                           "reason": r["reason"]} for r in report])
    warnings = inherited + sanity.stain_fallbacks(key, stain, paths.relative(stain_report_csv(key)))
    write_index(key, index, rejected, duplicates, warnings)
    fileio.write_csv(stain_report_csv(key), stain)
    fell_back = int((~stain["normalized"].astype(bool)).sum())
    # what a model trained on these images needs done to a raw image (its card copies it): the fitted normalizer
    step = {**normalizer.card(), "reference": entry.stain.reference, "dataset": key}
    fileio.write_json(paths.derived_json(key), {"from": entry.source, "stain": entry.stain.model_dump(),
                                                "images": len(index), "kept_original_colours": fell_back,
                                                "before_model": step})
    print(f"{key}: {len(index)} images from {entry.source}, {entry.stain.method} stain normalization; "
          f"{fell_back} kept their original colours (see {paths.relative(stain_report_csv(key))})")
    sanity.print_warnings(key, warnings)
    return index

"""Multi-level transfer: a `pretraining` entry trains a model on another dataset (e.g. ImageNet weights, then
LC25000's lung classes) into models/pretrained/<key>.keras, a DVC output of its own stage; a study row with
`init_from: <key>` starts from that model's backbone with a new head (tlrepro.studies.base.init_backbone).

Changing the study's own settings reruns only the study; the pretrained model is reused.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tlrepro.core import config, fileio, paths
from tlrepro.core.errors import UserError
from tlrepro.data import derive
from tlrepro.data import labels as lab
from tlrepro.data.index import read_index
from tlrepro.data.splits import cap_per_class, split_protocol
from tlrepro.modeling import backbones, cards, compute, models, training
from tlrepro.results import metrics
from tlrepro.studies.base import check_finite
from tlrepro.studies.outputs import runs_table


def training_log(key: str) -> Path:
    """The pretraining entry's DVCLive folder (its stage's output, as is its per-epoch chart)."""
    return paths.REPORTS / "training" / "pretraining" / key


def pretrain(key: str) -> Path:
    """Train the pretraining entry `key` and save it with its card; returns the model path."""
    params = config.load_params()
    if key not in params.pretraining:
        raise UserError(f"Unknown pretraining entry `{key}`: params.yaml `pretraining` has "
                        f"{', '.join(params.pretraining) or 'none'}.")
    entry = params.pretraining[key]
    row = entry.row(key)
    where = f"pretraining.{key}"
    index = read_index(entry.dataset)
    if entry.classes:
        unknown = sorted(set(entry.classes) - set(index["label"]))
        if unknown:
            raise UserError(f"{where}.classes names {unknown}, which `{entry.dataset}` does not have "
                            f"(it has {', '.join(sorted(set(index['label'])))}).")
        index = index[index["label"].isin(entry.classes)]
    index = cap_per_class(index, params.scale.max_images_per_class, params.seed)
    classes = lab.class_names(index["label"], "folder", entry.classes)
    split = split_protocol(index, entry.split, seed=params.seed, group=None, where=f"{where}.split",
                           max_distance=params.leakage.phash_max_distance)
    train, val = split[split["side"] == "train"], split[split["side"] == "val"]
    plan = compute.activate(params.compute)
    training.seed_everything(params.seed)
    with plan.scope():
        classifier = models.build_classifier(row, classes=classes, seed=params.seed)
        models.set_trainable(classifier, row.trainable_layers, row.trainable_from)
        started = time.perf_counter()
        result = training.train(classifier, train, val, train_labels=lab.encode(train["label"], classes),
                                val_labels=lab.encode(val["label"], classes), epochs=params.epochs(row),
                                seed=params.seed, name=key, live=training_log(key))
        probs, _ = training.predict(classifier, val, use_cache=False)
    check_finite(probs, f"pretraining.{key}.model", "validation")
    e = params.evaluation
    # intervals resample the split's groups (an image's rotated and flipped copies) when it has them
    clusters = val["group"] if entry.split.group and val["group"].astype(bool).all() else None
    figures = (metrics.multiclass_accuracy(lab.encode(val["label"], classes), probs, seed=params.seed,
                                           resamples=e.bootstrap_resamples, confidence=e.confidence, groups=clusters)
               if len(classes) > 2 else metrics.evaluate(lab.encode(val["label"], classes), probs, seed=params.seed,
                                                         resamples=e.bootstrap_resamples, confidence=e.confidence,
                                                         groups=clusters, unit=entry.split.group or "image"))
    card = {
        "study": None, "pretraining": key, "name": f"pretrained/{key}", "seed": params.seed, "backbone": row.backbone,
        "weights": backbones.weights_provenance(row.backbone, row.weights, row.image_size),
        "se": row.se.model_dump() if row.se else None,
        "head": [h.model_dump(exclude_none=True) for h in row.head], "image_size": row.image_size,
        "input": {"color": "RGB", "range": [0, 255], "resize": "bilinear", "dtype": "float32"},
        "preprocessing": classifier.preprocessing.mode, "classes": list(classes), "positive_class": None,
        "threshold": None,
        "training": {**row.settings(), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                     "path": result.path, "seconds": round(time.perf_counter() - started, 1),
                     "history": result.history.round(6).to_dict(orient="list")},
        "data": {"dataset": entry.dataset, "classes": list(classes), "sides": split.groupby("side").size().to_dict(),
                 "split": entry.split.method + (f" by {entry.split.group}" if entry.split.group else ""),
                 "index_sha256": fileio.file_sha256(paths.index_csv(entry.dataset))},
        "metrics": {"side": "val", **figures},
        "phash_max_distance": params.leakage.phash_max_distance,
        "training_phashes": sorted(set(np.asarray(train["phash"]).tolist())),
        **cards.seen_fields(train, val),
        "before_model": derive.input_steps(entry.dataset),
    }
    path, _ = cards.save(classifier.model, paths.pretrained_model(key), card)
    fileio.write_csv(paths.PLOTS / "pretraining" / key / "epochs.csv", runs_table([result.history.assign(run=key)]))
    print(f"{key}: {result.epochs_run} epochs in {result.seconds:.0f} s on {len(train)} {entry.dataset} images "
          f"({', '.join(classes)}); validation accuracy {figures['accuracy']:.4f} on {len(val)}; wrote "
          f"{paths.relative(path)}")
    return path

"""What a cross-validation costs in frozen-feature extraction against one split, with the per-image store.

    python benchmarks/cv_extraction.py [--study kumar2022] [--row VGG16] [--protocol patient] [--smoke]

For the row's frozen backbone (augmentation left out: plain features), the features of every side of one split
(the study's first protocol) are extracted into an empty store, then those of every fold of the cross-validated
protocol into another empty store; each is timed. With one entry per image and view, the folds share their
extraction: the ratio should be close to 1 (issue 16's target: at most 1.2). Needs the study's split (dvc
repro split@<study>); IMAGENET_WEIGHTS_DIR or the internet for ImageNet weights.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import make_parser, run_main, smoke_project


def extract_all(frames, classifier, frozen, batch: int, store: Path) -> tuple[float, int]:
    from tlrepro.modeling import frozen_cache as fc

    started, computed = time.perf_counter(), 0
    for frame in frames:
        _, hit = fc.extract(frozen, frame, classifier=classifier, batch_size=batch, cache_dir=store)
        computed += not hit
    return time.perf_counter() - started, computed


def main() -> None:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--study", default="kumar2022")
    parser.add_argument("--row", default="VGG16")
    parser.add_argument("--protocol", default="patient")
    args = parser.parse_args()
    from tlrepro.modeling import frozen_cache as fc
    from tlrepro.modeling import models
    from tlrepro.studies import base

    study = base.load_study(args.study, smoke_project() if args.smoke else None)  # smoke: TinyCNN, 32 px
    row = study.row(args.row).model_copy(update={"augmentation": None, "augmentation_views": None})
    classifier = models.build_classifier(row, classes=study.classes, seed=study.seed)
    models.set_trainable(classifier, 0)
    frozen = fc.split_frozen(classifier)
    one = [study.part(side, study.primary) for side in ("train", "val", "test")]
    folds = [study.part(side, args.protocol, unit) for unit in study.units(args.protocol)
             for side in ("train", "val", "test")]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        split_s, split_n = extract_all(one, classifier, frozen, row.batch_size, Path(a))
        cv_s, cv_n = extract_all(folds, classifier, frozen, row.batch_size, Path(b))
    images = sum(len(f) for f in one)
    print(f"{args.study} {args.row} ({row.backbone}): one split ({study.primary}, {images} rows): {split_s:.1f} s, "
          f"{split_n} frame(s) computed")
    print(f"{args.protocol}: {len(study.units(args.protocol))} folds, {sum(len(f) for f in folds)} rows: {cv_s:.1f} s, "
          f"{cv_n} of {len(folds)} frames computed anything")
    print(f"cross-validation / one split: {cv_s / split_s:.2f}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))

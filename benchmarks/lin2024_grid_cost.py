"""What the lin2024 grid costs here, against what training every cell the study's way would cost.

The study trained each (backbone, learning rate, epoch budget) cell separately, running the frozen
backbone over every image in every epoch. This script measures, per backbone, the seconds of one such
epoch (a few real batches of whole-model training plus validation prediction, scaled to the split's
size), multiplies by the grid's total epochs, and sets that against the grid's measured wall time
(reports/timings/lin2024.json, written by the lin2024 stage).

    python benchmarks/lin2024_grid_cost.py [--batches 3]

Needs ImageNet weights where params.yaml asks for them (IMAGENET_WEIGHTS_DIR offline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="timed batches per backbone (after one warm-up)")
    parser.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    args = parser.parse_args()

    from tlrepro import config, models, paths, training
    from tlrepro.errors import UserError
    from tlrepro.tfdata import image_dataset, read_split

    try:
        params = config.load_params(args.params)
        s = config.study("lin2024", params)
        splits = read_split(paths.split_csv("lin2024"))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    timings_file = paths.REPORTS / "timings" / "lin2024.json"
    if not timings_file.is_file():
        print(f"error: {paths.relative(timings_file)} not found: run `dvc repro lin2024` first.", file=sys.stderr)
        return 2
    grid_seconds = json.loads(timings_file.read_text())["grid_seconds"]

    batch, size = int(s["batch_size"]), int(s["image_size"])
    n_train = int((splits["split"] == "train").sum())
    n_val = int((splits["split"] == "val").sum())
    budgets = [config.capped_epochs(int(e), params) for e in s["epochs"]]
    epochs_per_backbone = len(s["learning_rates"]) * sum(budgets)  # every cell trained separately
    sample = splits[splits["split"] == "train"].head(batch * (args.batches + 1))

    print(f"lin2024 grid: {len(s['learning_rates'])} learning rates x epochs {budgets} = "
          f"{epochs_per_backbone} epochs per backbone; train {n_train}, val {n_val} images, batch {batch}, {size}px")
    print(f"{'backbone':18} {'s/train batch':>14} {'s/val batch':>12} {'s/epoch':>9} {'naive hours':>12}")
    naive_total = 0.0
    for backbone in s["backbones"]:
        clf = models.build_classifier(backbone, image_size=size, weights=s["weights"][backbone], head=s["head"],
                                      preprocessing=s.get("preprocessing", "native"), seed=int(params["seed"]))
        models.set_trainable(clf, 0)
        training.compile_binary(clf.model, float(s["learning_rates"][0]))
        batches = list(image_dataset(sample, size, batch))
        clf.model.train_on_batch(*batches[0])  # warm-up: tracing and weight loading are not per-epoch costs
        clf.model.predict_on_batch(batches[0][0])
        started = time.perf_counter()
        for x, y in batches[1:]:
            clf.model.train_on_batch(x, y)
        train_batch = (time.perf_counter() - started) / (len(batches) - 1)
        started = time.perf_counter()
        for x, _ in batches[1:]:
            clf.model.predict_on_batch(x)
        val_batch = (time.perf_counter() - started) / (len(batches) - 1)
        per_epoch = train_batch * -(-n_train // batch) + val_batch * -(-n_val // batch)
        naive = per_epoch * epochs_per_backbone
        naive_total += naive
        print(f"{backbone:18} {train_batch:14.2f} {val_batch:12.2f} {per_epoch:9.1f} {naive / 3600:12.1f}")

    print(f"naive cost (every cell separately, backbone run every epoch): {naive_total / 3600:.1f} h")
    print(f"grid wall time here (features once + one run per learning rate): {grid_seconds / 60:.1f} min")
    print(f"ratio: {naive_total / grid_seconds:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

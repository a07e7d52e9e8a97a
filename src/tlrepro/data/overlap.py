"""data/overlap.json: how many images every prepared dataset shares with every other one.

Kaggle datasets are often rebuilt from the same sources: the melanoma set, for instance, holds re-encoded
copies of the skin set's images. A model trained on one and tested on the other would be scored on images
it has seen, so the index page shows this matrix and studies that cross datasets say so.
"""

from __future__ import annotations

from pathlib import Path

from tlrepro.core import config, fileio, paths
from tlrepro.data import leakage
from tlrepro.data.index import read_index


def write_overlap() -> Path:
    params = config.load_params()
    indexes = {key: read_index(key) for key in params.datasets}
    report = leakage.dataset_overlap(indexes, params.leakage.phash_max_distance)
    target = fileio.write_json(paths.overlap_json(), report)
    for a, row in report["matrix"].items():
        shared = ", ".join(f"{b}: {v['exact']} exact / {v['near']} near" for b, v in row.items() if b != a)
        print(f"{a} ({report['datasets'][a]} images) also in {shared}")
    return target

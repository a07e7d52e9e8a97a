"""How long the leakage audit takes on many images: random 64-bit hashes on three sides, counted in chunks.

    python benchmarks/leakage_audit.py [--images 14000 28000 56000] [--smoke]

Prints, per size, the seconds of one audit (exact, near and rotated/flipped pairs across every pair of sides)
and of the per-image training-match flags. The audit groups identical hashes and compares distinct ones in
chunks, so memory stays linear; time grows with the square of the distinct hashes.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from _common import make_parser, run_main


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hashes = [f"{int(v):016x}" for v in rng.integers(0, 2**63, n, dtype=np.int64)]
    return pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "sha256": [f"sha{i}" for i in range(n)],
                         "side": rng.choice(["train", "val", "test"], n), "view": "identity", "phash": hashes,
                         "dihedral_phashes": [" ".join([h] * 8) for h in hashes]})


def main() -> None:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--images", type=int, nargs="+", default=[14_000, 28_000])
    args = parser.parse_args()
    if args.smoke:
        args.images = [300]
    from tlrepro.data.leakage import audit, train_matches

    rows = []
    for n in args.images:
        data = frame(n)
        started = time.perf_counter()
        report = audit(data)
        audited = time.perf_counter() - started
        started = time.perf_counter()
        train_matches(data)
        rows.append({"images": f"{report['images']:,}", "audit s": f"{audited:.1f}",
                     "train-match flags s": f"{time.perf_counter() - started:.1f}"})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(run_main(main))

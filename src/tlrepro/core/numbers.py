"""Small numeric helpers shared by the schema and the splits."""

from __future__ import annotations

import numpy as np


def allocate(n: int, fractions: list[float]) -> list[int]:
    """Split n items into counts proportional to `fractions` that sum to n (largest remainder)."""
    exact = np.asarray(fractions, dtype=float) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()

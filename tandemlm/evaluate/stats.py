"""Statistics for reports."""

from __future__ import annotations

import random
import statistics


def bootstrap_stderr(values: list[float], resamples: int = 1000, seed: int = 0) -> float | None:
    """Bootstrap standard error of the mean (None for fewer than two values)."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = [sum(rng.choices(values, k=n)) / n for _ in range(resamples)]
    return statistics.stdev(means)

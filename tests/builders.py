"""Synthetic data the tests share: copies of the paper's datasets in their hubs' schemas (and ObjectNet's folder
layout) for tests/test_datasets.py (the label mappings) and tests/test_protocols.py (the protocols end to end); the
analytic Gaussian model's samples as a dataset, and records compared across runs, for the run engine's tests."""

from __future__ import annotations

import csv

import numpy as np
import torch
from PIL import Image

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.data.datasets import HUB_DATASETS, EvalDataset
from diffusion_classifier.data.prompts import published_prompts
from diffusion_classifier.models.gaussian import GaussianClassModel


def gaussian_dataset(n_images: int, seed: int = 0, broken: set[int] | None = None):
    """A classifier on a Gaussian class model (4 classes of 2 x 2 x 2 latents) and a dataset of n_images of its
    samples (labels 0, 1, 2, 3, 0, ...); images whose index is in `broken` fail to load. (clf, dataset, samples)."""
    gen = torch.Generator().manual_seed(seed)
    model = GaussianClassModel(torch.randn(4, 2, 2, 2, generator=gen) * 2, std=0.7)
    ys = torch.arange(n_images) % 4
    xs = model.sample(ys, generator=gen)
    broken = broken if broken is not None else set()

    def load(i: int):
        if i in broken:
            raise OSError(f"image {i} is unreadable")
        return xs[i]

    dataset = EvalDataset.from_names("gauss", "test", [str(int(y)) for y in ys], load, model.class_names)
    return DiffusionClassifier(model), dataset, xs


def comparable(records: dict) -> dict:
    """Records without the fields that vary between equal runs (time, which process)."""
    return {i: {k: v for k, v in r.items() if k not in ("seconds", "rank")} for i, r in records.items()}


def table_classnames(name: str) -> list[str]:
    """The published prompts table's class names, by classidx."""
    rows = {}
    with published_prompts(name).open(newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(int(r["classidx"]), r["classname"])
    return [rows[i] for i in range(len(rows))]


def imagenet_names() -> list[str]:
    """ILSVRC/imagenet-1k's ClassLabel names: WordNet lemma lists in wnid order. Those at the anchors (and a
    few more) as its classes.py spells them; the others are the table's own names (index mapping never
    reads them)."""
    names = table_classnames("imagenet")
    known = {
        0: "tench, Tinca tinca",
        1: "goldfish, Carassius auratus",
        2: "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
        7: "cock",
        657: "missile",
        744: "projectile, missile",
        836: "sunglass",
        837: "sunglasses, dark glasses, shades",
        999: "toilet tissue, toilet paper, bathroom tissue",
    }
    for k, n in known.items():
        names[k] = n
    return names


def objectnet_folders(root, extra: tuple[str, ...] = ("air_freshener", "bathrobe")) -> list[str]:
    """ObjectNet's images/ layout: one folder per class, 313 in the release; these hold the table's 113 classes
    (the official folder names) and folders outside it. Each image has the release's 1-px red frame."""
    folders = sorted([*table_classnames("objectnet"), *extra])
    for i, c in enumerate(folders):
        (root / c).mkdir(parents=True)
        img = np.zeros((10, 12, 3), dtype=np.uint8)
        img[:, :] = (255, 0, 0)
        img[2:-2, 2:-2] = i
        Image.fromarray(img).save(root / c / "0a1b.png")
    return folders


def hub_copy(tmp_path, name: str, names: list[str], hub_ids: list[int]) -> str:
    """A save_to_disk copy of a named dataset with the hub's image and label columns and split: one random
    20 x 24 image per id in `hub_ids`, the ClassLabel names `names`."""
    import datasets

    spec = HUB_DATASETS[name]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in hub_ids]
    features = datasets.Features(
        {spec.image_column: datasets.Image(), spec.label_column: datasets.ClassLabel(names=names)}
    )
    ds = datasets.Dataset.from_dict({spec.image_column: images, spec.label_column: hub_ids}, features=features)
    path = tmp_path / f"{name}-copy"
    datasets.DatasetDict({spec.split: ds}).save_to_disk(str(path))
    return str(path)

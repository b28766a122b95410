"""Evaluation datasets: the paper's (through Hugging Face `datasets`), image folders, and the bundled MNIST split.

Every source becomes an EvalDataset: labels are known up front (cheap), images are decoded one at a
time on request (lazily, so a bad image fails alone and a run never holds the dataset in memory).
Dataset labels are class names; for the paper's datasets they are the classnames of the published
prompts CSV, so they match the candidates built from it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..errors import UserInputError
from .images import DEFAULT_OPTIONS, ImageOptions, load_image
from .prompts import published_prompts

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class HubSpec:
    """Where one of the paper's datasets lives on the Hugging Face hub and how its columns read.

    label_ids: "auto" maps a ClassLabel name to the prompts CSV classname when every name matches
    (case, '_' and ' ' ignored), else the integer label is the CSV classidx; "number" means the
    ClassLabel names are 1-based class numbers ("1".."102").
    """

    hub_id: str | None  # None: no usable public copy; pass a local copy with --data-dir
    split: str
    image_column: str = "image"
    label_column: str = "label"
    label_ids: Literal["auto", "number"] = "auto"


#: Our dataset names -> hub copies. The hub copies are community uploads: check that their label ids
#: follow the torchvision order of the published prompts (see docs/evaluation.md) before trusting a number.
HUB_DATASETS: dict[str, HubSpec] = {
    "cifar10": HubSpec("uoft-cs/cifar10", "test", image_column="img"),
    "cifar100": HubSpec("uoft-cs/cifar100", "test", image_column="img", label_column="fine_label"),
    "stl10": HubSpec("tanganke/stl10", "test"),
    "pets": HubSpec("timm/oxford-iiit-pet", "test"),
    "flowers": HubSpec("nelorth/oxford-flowers", "test", label_ids="number"),
    "food": HubSpec("ethz/food101", "validation"),
    "aircraft": HubSpec(None, "test"),
    "imagenet": HubSpec("ILSVRC/imagenet-1k", "validation"),  # gated: accept the terms, then `hf auth login`
    "objectnet": HubSpec(None, "test"),  # the license forbids redistribution: use a local copy
    "mnist": HubSpec("ylecun/mnist", "test"),
}


class EvalDataset:
    """N labelled images: labels[i] is the class name of image i; image(i) decodes it (may raise)."""

    def __init__(
        self,
        name: str,
        split: str,
        labels: Sequence[str],
        load: Callable[[int], Any],
        class_names: Sequence[str] | None = None,
        prompts: Path | None = None,
    ):
        self.name = name
        self.split = split
        self.labels = list(labels)
        self._load = load
        self.class_names = list(class_names) if class_names is not None else list(dict.fromkeys(self.labels))
        self.prompts = prompts  # the published prompts CSV, for text models

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Any:
        """Image i, decoded now (a PIL image for files and HF datasets)."""
        return self._load(i)


def open_dataset(
    name: str,
    split: str | None = None,
    data_dir: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    image_options: ImageOptions = DEFAULT_OPTIONS,
) -> EvalDataset:
    """A dataset by name: builtin:mnist, folder:PATH, one of HUB_DATASETS, a save_to_disk folder or a hub id.

    Images are decoded by data.images.load_image with image_options (pixel cap, EXIF orientation).
    """
    if name == "builtin:mnist":
        return _builtin_mnist(split or "test")
    if name.startswith("folder:"):
        return _folder(name, Path(name.split(":", 1)[1]).expanduser(), image_options)
    return _hf(name, split, data_dir, image_column, label_column, image_options)


def dataset_names() -> list[str]:
    return ["builtin:mnist", "folder:PATH", *HUB_DATASETS]


def _builtin_mnist(split: str) -> EvalDataset:
    from . import mnist

    if split != "test":
        raise UserInputError(f"builtin:mnist has only the held-out 'test' split (got --split {split})")
    data = mnist.test_split()
    labels = [mnist.CLASS_NAMES[y] for y in data.labels]
    return EvalDataset(
        "builtin:mnist",
        "test",
        labels,
        lambda i: Image.fromarray(data.images[i]),
        mnist.CLASS_NAMES,
        published_prompts("mnist"),
    )


def _folder(name: str, root: Path, image_options: ImageOptions) -> EvalDataset:
    """One subfolder of images per class; the label is the subfolder's name; sorted, so indices are stable."""
    if not root.is_dir():
        raise UserInputError(f"dataset folder not found: {root} (folder:PATH needs one subfolder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [
        (c, f)
        for c in classes
        for f in sorted((root / c).iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise UserInputError(f"no images in {root}: expected {root}/CLASS_NAME/IMAGE.png")
    return EvalDataset(name, "all", [c for c, _ in files], lambda i: load_image(files[i][1], image_options), classes)


# --- Hugging Face datasets -------------------------------------------------------------------------


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise UserInputError(
            "this dataset needs the optional `datasets` package: pip install 'diffusion-classifier[datasets]'"
        ) from None
    return datasets


def _hf(
    name: str,
    split: str | None,
    data_dir: str | None,
    image_column: str | None,
    label_column: str | None,
    image_options: ImageOptions,
) -> EvalDataset:
    datasets = _import_datasets()
    spec = HUB_DATASETS.get(name)
    split = split or (spec.split if spec else "test")
    source = data_dir or (None if spec else name)
    if source is None:
        source = spec.hub_id
        if source is None:
            raise UserInputError(f"{name} has no public copy we can download; pass a local copy with --data-dir PATH")
    ds = _load_split(datasets, source, split)
    image_col = image_column or _column(ds, spec.image_column if spec else None, datasets.Image, "image")
    label_col = label_column or _column(ds, spec.label_column if spec else None, datasets.ClassLabel, "label")
    for col in (image_col, label_col):
        if col not in ds.column_names:
            raise UserInputError(
                f"{source} has no column {col!r} (columns: {', '.join(ds.column_names)}); "
                "name them with --image-column / --label-column"
            )
    feature = ds.features[label_col]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    raw = list(ds.select_columns([label_col])[label_col])
    prompts = published_prompts(name) if spec else None
    labels, classes = _label_names(raw, names, prompts, spec.label_ids if spec else "auto")
    images = ds.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))

    def load(i: int) -> Image.Image:
        return load_image(images[i][image_col], image_options, name=f"{name} image {i}")

    return EvalDataset(name, split, labels, load, classes, prompts)


def _load_split(datasets, source: str, split: str):
    """A local save_to_disk folder (Dataset or DatasetDict) or a hub dataset (the local cache when offline)."""
    path = Path(source).expanduser()
    if path.exists():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise UserInputError(f"{path} is not a folder written by datasets' save_to_disk") from None
    else:
        try:
            ds = datasets.load_dataset(source, split=split)  # only this split: ImageNet's train split is 140 GB
        except Exception as exc:  # the hub client raises many types; all mean "cannot get this dataset"
            raise UserInputError(f"cannot load dataset {source!r}: {exc.__class__.__name__}: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserInputError(f"{source} has no split {split!r}; splits: {', '.join(ds)}")
        ds = ds[split]
    return ds


def _column(ds, preferred: str | None, kind, default: str) -> str:
    """The table's column name if present, else the first column of that feature type, else the default."""
    if preferred in ds.column_names:
        return preferred
    return next((col for col, f in ds.features.items() if isinstance(f, kind)), default)


def _label_names(
    raw: list, names: list[str] | None, prompts: Path | None, label_ids: str
) -> tuple[list[str], list[str]]:
    """(label of each row, class names) as strings; through the prompts CSV's classidx -> classname if any."""
    if prompts is None:
        classes = names if names is not None else sorted({str(x) for x in raw})
        return [classes[x] if names is not None else str(x) for x in raw], classes
    table = classnames_by_index(prompts)
    if names is not None and label_ids == "number":
        ids = [int(n) - 1 for n in names]
    elif names is not None and {_norm(n) for n in names} == {_norm(c) for c in table}:
        by_norm = {_norm(c): i for i, c in enumerate(table)}
        ids = [by_norm[_norm(n)] for n in names]
    else:
        ids = None  # the integer label is the classidx
    bad = [x for x in raw if not isinstance(x, int) or not 0 <= (ids[x] if ids else x) < len(table)]
    if bad:
        raise UserInputError(f"label {bad[0]!r} is not a class index of {prompts.name} (0..{len(table) - 1})")
    return [table[ids[x] if ids else x] for x in raw], table


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", str(name)).strip().lower()


def classnames_by_index(prompts: Path) -> list[str]:
    """The classnames of a published prompts CSV in classidx order."""
    with prompts.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_idx = {int(r["classidx"]): r["classname"] for r in rows}
    return [by_idx[i] for i in range(len(by_idx))]


# --- selecting images ------------------------------------------------------------------------------


def select_indices(n: int, limit: int | None = None, subset: Sequence[int] | None = None) -> tuple[int, ...]:
    """The dataset indices to evaluate, in order: all, the first `limit`, or the given subset."""
    if limit is not None and subset is not None:
        raise UserInputError("give only one of --limit and --subset")
    if limit is not None:
        if limit < 1:
            raise UserInputError(f"--limit must be at least 1, got {limit}")
        return tuple(range(min(limit, n)))
    if subset is not None:
        bad = [i for i in subset if not 0 <= i < n]
        if bad:
            raise UserInputError(f"subset index {bad[0]} is outside the dataset (0..{n - 1})")
        if len(set(subset)) != len(subset):
            raise UserInputError("the subset file lists an index twice")
        return tuple(subset)
    return tuple(range(n))


def read_subset_file(path: str | Path) -> tuple[int, ...]:
    """Dataset indices from a file: a JSON list, or integers separated by whitespace or commas."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"subset file not found: {path}")
    text = path.read_text()
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else [int(x) for x in re.split(r"[\s,]+", text) if x]
        return tuple(int(x) for x in values)
    except (ValueError, TypeError):
        raise UserInputError(f"subset file {path} must hold dataset indices (integers)") from None

"""Evaluation datasets: the paper's (through Hugging Face `datasets`), image folders, and the bundled MNIST split.

Every source becomes an EvalDataset: labels are known up front (cheap), images are decoded one at a
time on request (lazily, so a bad image fails alone and a run never holds the dataset in memory).
Dataset labels are class names; for the paper's datasets they are the classnames of the published
prompts CSV, so they match the candidates built from it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..errors import UserInputError
from .prompts import published_prompts, read_text

log = logging.getLogger(__name__)

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
    """N labelled images: label_ids[i] is the class index of image i, class_names[k] the name of class k,
    image(i) decodes image i (may raise).

    Class indices are the published classidx for the paper's datasets (two classes may share a name:
    ImageNet's 657 and 744 are both "missile"), the sorted subfolder position for folder:PATH, the digit
    for builtin:mnist.
    """

    def __init__(
        self,
        name: str,
        split: str,
        label_ids: Sequence[int],
        class_names: Sequence[str],
        load: Callable[[int], Any],
        prompts: Path | None = None,
    ):
        self.name = name
        self.split = split
        self.label_ids = [int(k) for k in label_ids]
        self.class_names = [str(c) for c in class_names]
        bad = next((k for k in self.label_ids if not 0 <= k < len(self.class_names)), None)
        if bad is not None:
            raise UserInputError(f"{name}: label {bad} is not a class index (0..{len(self.class_names) - 1})")
        self._load = load
        self.prompts = prompts  # the published prompts CSV, for text models

    @classmethod
    def from_names(
        cls,
        name: str,
        split: str,
        labels: Sequence[str],
        load: Callable[[int], Any],
        class_names: Sequence[str] | None = None,
        prompts: Path | None = None,
    ) -> EvalDataset:
        """A dataset whose images are labelled by class name (names unique; default: in order of appearance)."""
        class_names = list(class_names) if class_names is not None else list(dict.fromkeys(labels))
        index = {c: k for k, c in enumerate(class_names)}
        missing = next((x for x in labels if x not in index), None)
        if missing is not None:
            raise UserInputError(f"{name}: label {missing!r} is not one of its class names")
        return cls(name, split, [index[x] for x in labels], class_names, load, prompts)

    @property
    def labels(self) -> list[str]:
        """The class name of each image."""
        return [self.class_names[k] for k in self.label_ids]

    def __len__(self) -> int:
        return len(self.label_ids)

    def image(self, i: int) -> Any:
        """Image i, decoded now (a PIL image for files and HF datasets)."""
        return self._load(i)


def open_dataset(
    name: str,
    split: str | None = None,
    data_dir: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> EvalDataset:
    """A dataset by name: builtin:mnist, folder:PATH, one of HUB_DATASETS, a save_to_disk folder or a hub id."""
    if name == "builtin:mnist":
        return _builtin_mnist(split or "test")
    if name.startswith("folder:"):
        return _folder(name, Path(name.split(":", 1)[1]).expanduser())
    return _hf(name, split, data_dir, image_column, label_column)


def dataset_names() -> list[str]:
    return ["builtin:mnist", "folder:PATH", *HUB_DATASETS]


def _builtin_mnist(split: str) -> EvalDataset:
    from . import mnist

    if split != "test":
        raise UserInputError(f"builtin:mnist has only the held-out 'test' split (got --split {split})")
    data = mnist.test_split()
    return EvalDataset(
        "builtin:mnist",
        "test",
        data.labels.tolist(),
        mnist.CLASS_NAMES,
        lambda i: Image.fromarray(data.images[i]),
        published_prompts("mnist"),
    )


def _folder(name: str, root: Path) -> EvalDataset:
    """One subfolder of images per class; the label is the subfolder's name; sorted, so indices are stable."""
    if not root.is_dir():
        raise UserInputError(f"dataset folder not found: {root} (folder:PATH needs one subfolder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [
        (k, f)
        for k, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise UserInputError(f"no images in {root}: expected {root}/CLASS_NAME/IMAGE.png")
    return EvalDataset(name, "all", [k for k, _ in files], classes, lambda i: decode_image(files[i][1]))


def decode_image(source: Any) -> Image.Image:
    """An RGB PIL image from a path, raw bytes or an HF image cell; any failure raises (the runner records it)."""
    if isinstance(source, dict):  # an undecoded datasets.Image cell: {"bytes": ..., "path": ...}
        source = io.BytesIO(source["bytes"]) if source.get("bytes") else source["path"]
    with Image.open(source) as img:
        img.load()  # force the decode now, inside the caller's try
        return img.convert("RGB")


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
    name: str, split: str | None, data_dir: str | None, image_column: str | None, label_column: str | None
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
    ids, classes = _label_names(raw, names, prompts, spec.label_ids if spec else "auto")
    images = ds.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
    return EvalDataset(name, split, ids, classes, lambda i: decode_image(images[i][image_col]), prompts)


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
    """(class index of each row, class names); through the prompts CSV's classidx -> classname if any."""
    if prompts is None:
        if names is not None:
            return list(raw), names
        classes = sorted({str(x) for x in raw})
        pos = {c: k for k, c in enumerate(classes)}
        return [pos[str(x)] for x in raw], classes
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
    return [ids[x] if ids else x for x in raw], table


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", str(name)).strip().lower()


def classnames_by_index(prompts: Path) -> list[str]:
    """The classnames of a published prompts CSV in classidx order."""
    with prompts.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_idx = {int(r["classidx"]): r["classname"] for r in rows}
    return [by_idx[i] for i in range(len(by_idx))]


# --- selecting images ------------------------------------------------------------------------------


def shuffle_key(seed: int, i: int) -> bytes:
    """Image i's place in the seed's shuffle: a hash, so the order is the same on every machine and
    version (no random generator stream), and a class's or a prefix's picks never depend on other images."""
    return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()


def shuffled(indices: Iterable[int], seed: int) -> list[int]:
    """The indices in the seed's shuffled order."""
    return sorted(indices, key=lambda i: shuffle_key(seed, i))


def per_class_subset(label_ids: Sequence[int], n_classes: int, per_class: int, seed: int) -> tuple[int, ...]:
    """n images of every class, each class's first ones in the seed's shuffle; round by round (the first
    pick of every class in class order, then the second, ...), so a larger per_class extends a smaller one."""
    if per_class < 1:
        raise UserInputError(f"--per-class must be at least 1, got {per_class}")
    by_class: list[list[int]] = [[] for _ in range(n_classes)]
    for i, k in enumerate(label_ids):
        by_class[k].append(i)
    picks = [shuffled(members, seed)[:per_class] for members in by_class]
    short = sum(len(p) < per_class for p in picks)
    if short:
        log.warning("%d of %d classes have fewer images than --per-class %d: all of theirs are taken", short,
                    n_classes, per_class)  # fmt: skip
    return tuple(p[r] for r in range(per_class) for p in picks if r < len(p))


def select_indices(
    dataset: EvalDataset,
    limit: int | None = None,
    subset: Sequence[int] | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> tuple[int, ...]:
    """The dataset indices to evaluate, in order: all; the first `limit` of the seed's shuffle (a larger
    limit extends a smaller one); `per_class` images of every class (per_class_subset); or the given subset."""
    n = len(dataset)
    if sum(x is not None for x in (limit, subset, per_class)) > 1:
        raise UserInputError("give only one of --limit, --subset and --per-class")
    if limit is not None:
        if limit < 1:
            raise UserInputError(f"--limit must be at least 1, got {limit}")
        return tuple(shuffled(range(n), seed)[:limit])
    if per_class is not None:
        return per_class_subset(dataset.label_ids, len(dataset.class_names), per_class, seed)
    if subset is not None:
        bad = [i for i in subset if not 0 <= i < n]
        if bad:
            raise UserInputError(f"subset index {bad[0]} is outside the dataset (0..{n - 1})")
        if len(set(subset)) != len(subset):
            raise UserInputError("the subset file lists an index twice")
        return tuple(subset)
    return tuple(range(n))


def read_subset_file(path: str | Path) -> tuple[int, ...]:
    """Dataset indices from a file: a .npy integer array (as the official --subset_path and --per-class
    write; never unpickled), a JSON list, or integers separated by whitespace or commas."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"subset file not found: {path}")
    if path.suffix.lower() == ".npy":
        return _read_npy_subset(path)
    text = read_text(path, "subset file")
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else [int(x) for x in re.split(r"[\s,]+", text) if x]
        return tuple(_as_index(x) for x in values)
    except (ValueError, TypeError):
        raise UserInputError(f"subset file {path} must hold dataset indices (integers)") from None


def _as_index(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"not an integer: {x!r}")
    return x


def _read_npy_subset(path: Path) -> tuple[int, ...]:
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # object arrays need pickle: refused
        raise UserInputError(f"subset file {path} is not a numeric .npy array ({exc.__class__.__name__})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise UserInputError(f"subset file {path} must hold a 1-D integer array of dataset indices")
    return tuple(int(x) for x in arr)


def save_subset(path: Path, indices: Sequence[int]) -> None:
    """The indices as a .npy int64 array (np.load reads it; so does the official --subset_path), atomically."""
    import numpy as np

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, np.asarray(indices, dtype=np.int64))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

"""Evaluation datasets: the paper's (through Hugging Face `datasets`), image folders, and the bundled MNIST split.

Every source becomes an EvalDataset: labels are known up front (cheap), images are decoded one at a
time on request (lazily, so a bad image fails alone and a run never holds the dataset in memory).
For the paper's datasets every label is mapped to the published prompts table's classidx (registry
HUB_DATASETS: by class name, or by index with anchor checks; docs/protocols.md cites each source).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import UserInputError
from .prompts import published_prompts, read_text
from .registry import DATASETS, HubSpec

if TYPE_CHECKING:  # numpy-heavy: the CLI reads HUB_DATASETS before it parses arguments
    from .images import ImageOptions

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


#: Our dataset names -> verified copies (the registry's hub specs; docs/protocols.md says where each was checked).
HUB_DATASETS: dict[str, HubSpec] = {name: entry.hub for name, entry in DATASETS.items()}


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
        identity: dict[str, Any] | None = None,
        file_sizes: Sequence[int] | None = None,
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
        # what a run directory records to refuse another dataset on resume (absolute, never the spelled name)
        self.identity = identity or {"kind": "custom", "name": name, "split": split, "images": len(self.label_ids)}
        self.file_sizes = tuple(file_sizes) if file_sizes is not None else None  # bytes of each image file

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
    image_options: ImageOptions | None = None,
) -> EvalDataset:
    """A dataset by name: builtin:mnist, folder:PATH, one of HUB_DATASETS, a save_to_disk folder or a hub id.

    A named dataset reads its hub copy, or --data-dir: a save_to_disk folder or a folder of class folders.
    Images are decoded by decode_image (data.images.load_image with image_options, then RGB).
    """
    if name == "builtin:mnist":
        return _builtin_mnist(split or "test")
    if name.startswith("builtin:"):  # not a hub id: a typo of the one builtin dataset
        raise UserInputError(f"unknown dataset {name!r}; use one of {', '.join(dataset_names())}")
    if name.startswith("folder:"):
        return _folder(name, Path(name.split(":", 1)[1]).expanduser(), image_options)
    spec = HUB_DATASETS.get(name)
    if spec is not None and data_dir is not None and _is_class_folders(Path(data_dir).expanduser()):
        return _local_class_folders(name, spec, split or spec.split, Path(data_dir).expanduser(), image_options)
    return _hf(name, split, data_dir, image_column, label_column, image_options)


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
        identity={"kind": "builtin", "name": "builtin:mnist", "split": "test", "images": len(data.labels)},
    )


def _folder(name: str, root: Path, image_options: ImageOptions | None) -> EvalDataset:
    """One subfolder of images per class; the label is the subfolder's name."""
    files, classes, ids = _class_folders(root)
    identity, sizes = folder_identity(root, files)
    return EvalDataset(
        name, "all", ids, classes, lambda i: decode_image(files[i], image_options), None, identity, sizes
    )


def _class_folders(root: Path) -> tuple[list[Path], list[str], list[int]]:
    """(image files, class names, class id of each file) in torchvision ImageFolder's order, the order the
    official code indexes (and its --subset_path files count in): classes sorted, then files sorted."""
    if not root.is_dir():
        raise UserInputError(f"dataset folder not found: {root} (it needs one subfolder of images per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [
        (k, f)
        for k, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise UserInputError(f"no images in {root}: expected {root}/CLASS_NAME/IMAGE.png")
    return [f for _, f in files], classes, [k for k, _ in files]


def _is_class_folders(path: Path) -> bool:
    """A folder that datasets' save_to_disk did not write (it always writes one of these files)."""
    saved = ("dataset_dict.json", "state.json", "dataset_info.json")
    return path.is_dir() and not any((path / f).is_file() for f in saved)


def _local_class_folders(
    name: str, spec: HubSpec, split: str, root: Path, image_options: ImageOptions | None
) -> EvalDataset:
    """A named dataset from a local folder of class folders (e.g. ImageNet val by wnid, ObjectNet's images/)."""
    files, names, raw = _class_folders(root)
    prompts = published_prompts(name)
    rows = _rows_in_table(raw, names, prompts, spec)
    ids, classes = _label_names([raw[i] for i in rows], names, prompts, spec)
    identity, sizes = folder_identity(root, [files[i] for i in rows])
    load = lambda i: decode_image(files[rows[i]], image_options)  # noqa: E731
    return _eval_dataset(name, split, ids, classes, load, spec, prompts, identity, sizes)


def folder_identity(root: Path, files: Sequence[Path]) -> tuple[dict[str, Any], list[int]]:
    """A folder dataset's identity (resolved path, image count, fingerprint of the relative paths) and the
    size of each file: cheap (no reads), and a fixed or replaced image changes its size."""
    names = "\n".join(f.relative_to(root).as_posix() for f in files)
    identity = {
        "kind": "folder",
        "path": str(root.resolve()),
        "images": len(files),
        "names": hashlib.sha256(names.encode()).hexdigest()[:16],
    }
    return identity, [f.stat().st_size for f in files]


def table_identity(name: str, source: str, split: str, ds: Any, rows: int) -> dict[str, Any]:
    """A datasets table's identity: the hub id or the resolved save_to_disk path, and datasets' fingerprint."""
    local = Path(source).expanduser()
    return {
        "kind": "disk" if local.exists() else "hub",
        "name": name,
        "source": str(local.resolve()) if local.exists() else source,
        "split": split,
        "images": rows,
        "fingerprint": getattr(ds, "_fingerprint", None),  # a hash of the table's content and history
    }


def decode_image(source: Any, image_options: ImageOptions | None = None, name: str | None = None) -> Image.Image:
    """A dataset image in RGB: torchvision's datasets (ImageFolder, Pets, Food, ...) convert each image to RGB
    when they open it, before the official transforms resize and crop; any failure raises (the runner records it)."""
    from .images import DEFAULT_OPTIONS, load_image

    return load_image(source, image_options or DEFAULT_OPTIONS, name=name).convert("RGB")


def crop_border(img: Image.Image, pixels: int) -> Image.Image:
    """The image less `pixels` on every side (the official ObjectNet loader cuts 2, its red frame)."""
    return img.crop((pixels, pixels, img.width - pixels, img.height - pixels))


def _eval_dataset(
    name: str,
    split: str,
    ids: list[int],
    classes: list[str],
    load: Callable[[int], Image.Image],
    spec: HubSpec | None,
    prompts: Path | None,
    identity: dict[str, Any] | None = None,
    file_sizes: Sequence[int] | None = None,
) -> EvalDataset:
    border = spec.crop_border if spec else 0
    image = (lambda i: crop_border(load(i), border)) if border else load
    return EvalDataset(name, split, ids, classes, image, prompts, identity, file_sizes)


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
    image_options: ImageOptions | None,
) -> EvalDataset:
    datasets = _import_datasets()
    spec = HUB_DATASETS.get(name)
    split = split or (spec.split if spec else "test")
    source = data_dir or (spec.hub_id if spec else name)
    if source is None:
        raise UserInputError(
            f"{name} has no public copy we could verify; pass a local copy with --data-dir PATH "
            "(a folder of class folders or a save_to_disk folder; see docs/protocols.md)"
        )
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
    rows = _rows_in_table(raw, names, prompts, spec)
    ids, classes = _label_names([raw[i] for i in rows], names, prompts, spec)
    images = ds.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
    identity = table_identity(name, source, split, ds, len(rows))
    load = lambda i: decode_image(images[rows[i]][image_col], image_options, name=f"{name} image {i}")  # noqa: E731
    return _eval_dataset(name, split, ids, classes, load, spec, prompts, identity)


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


# --- labels: a copy's label ids -> the published table's classidx -----------------------------------


def _label_names(
    raw: list, names: list[str] | None, prompts: Path | None, spec: HubSpec | None
) -> tuple[list[int], list[str]]:
    """(class index of each row, class names in index order).

    For a named dataset the index is the published table's classidx and the names are the table's (two
    classes may share a name: ImageNet's 657 and 744 are both "missile"); otherwise the copy's own classes.
    """
    if prompts is None or spec is None:
        return _own_classes(raw, names)
    table = classnames_by_index(prompts)
    to_table = _class_map(names, table, spec, prompts.name) if names is not None else list(range(len(table)))
    bad = [x for x in raw if not isinstance(x, int) or not 0 <= x < len(to_table) or to_table[x] is None]
    if bad:
        raise UserInputError(
            f"label {bad[0]!r} is not a class of {prompts.name} (0..{len(to_table) - 1}); "
            "check --label-column or use the copy docs/protocols.md names"
        )
    return [to_table[x] for x in raw], table


def _own_classes(raw: list, names: list[str] | None) -> tuple[list[int], list[str]]:
    """Any other dataset: its ClassLabel names, else its distinct label values (sorted) as the classes."""
    if names is not None:
        return list(raw), names
    classes = sorted({str(x) for x in raw})
    index = {c: i for i, c in enumerate(classes)}
    return [index[str(x)] for x in raw], classes


def _class_map(names: list[str], table: list[str], spec: HubSpec, table_name: str) -> list[int | None]:
    """The table classidx of each class of a copy (None: outside the table; allowed with extra_classes)."""
    if spec.labels == "index":
        _check_anchors(names, spec.anchors, table_name)
        if len(names) != len(table):
            raise UserInputError(f"this copy has {len(names)} classes and {table_name} {len(table)}: not the same set")
        return list(range(len(names)))
    alias = dict(spec.aliases)
    by_norm = {_norm(c): i for i, c in enumerate(table)}
    to_table = [by_norm.get(_norm(alias.get(n, n))) for n in names]
    unknown = [n for n, k in zip(names, to_table) if k is None]
    if unknown and not spec.extra_classes:
        raise UserInputError(
            f"class {unknown[0]!r} of this copy is not a class of {table_name}: its labels cannot be mapped to "
            "the published classes; use the copy docs/protocols.md names"
        )
    hit = [k for k in to_table if k is not None]
    if len(set(hit)) != len(hit):
        twice = next(k for k in hit if hit.count(k) > 1)
        raise UserInputError(f"two classes of this copy are both {table[twice]!r} of {table_name}")
    return to_table


def _check_anchors(names: list[str], anchors: tuple[tuple[int, tuple[str, ...]], ...], table_name: str) -> None:
    """Index-mapped copies: hand-checked classes must sit at their published ids (a reordered copy fails)."""
    for k, expected in anchors:
        have = names[k] if k < len(names) else None
        lemmas = {_norm(x) for x in str(have).split(",")}
        if have is None or not lemmas & {_norm(e) for e in expected}:
            raise UserInputError(
                f"class {k} of this copy is {have!r}, not {expected[0]!r}: its classes are not in the order of "
                f"{table_name}; use the copy docs/protocols.md names"
            )


def _rows_in_table(raw: list, names: list[str] | None, prompts: Path | None, spec: HubSpec | None) -> list[int]:
    """The rows to keep: all, except those of classes outside the table when the spec allows such classes."""
    if spec is None or prompts is None or names is None or not spec.extra_classes:
        return list(range(len(raw)))
    to_table = _class_map(names, classnames_by_index(prompts), spec, prompts.name)
    return [i for i, x in enumerate(raw) if not (isinstance(x, int) and 0 <= x < len(names)) or to_table[x] is not None]


def _norm(name: str) -> str:
    """A class name compared loosely: case and the separators ' ', '_', '-', '/' do not matter."""
    return re.sub(r"[\s_\-/]+", " ", str(name)).strip().lower()


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
        if not subset:  # an empty selection would "finish" a run that classified nothing
            raise UserInputError("the subset file lists no index: give at least one dataset index")
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

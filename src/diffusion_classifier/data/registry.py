"""The dataset registry: one entry per dataset of the paper (hub copy, classes, prompt table, published protocol).

Every other table of dataset facts derives from DATASETS: data/datasets.py's HUB_DATASETS (where a copy
lives), schedules.PUBLISHED (the published schedules, by dataset name), throughput.DATASET_CLASSES (the
labels an image is classified among), names.SCHEDULES (the CLI's schedule names). A new dataset is one
entry here. Plain data only: the CLI reads it while parsing arguments (no torch, numpy or PIL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class HubSpec:
    """Where a copy of one of the paper's datasets lives, its columns, and how its labels become the
    published prompts table's classidx (docs/protocols.md cites the source of every mapping).

    labels: "name": a label's name (its ClassLabel name, or its class folder) is a table classname,
    compared ignoring case and the separators ' ', '_', '-', '/', after `aliases`; "index": the
    integer label is the classidx (the names are of another vocabulary), and `anchors` must hold.
    """

    hub_id: str | None  # None: no verified public copy; pass a local copy with --data-dir
    split: str
    image_column: str = "image"
    label_column: str = "label"
    labels: Literal["name", "index"] = "name"
    aliases: tuple[tuple[str, str], ...] = ()  # (the copy's name, the table's classname): typos in a copy
    anchors: tuple[tuple[int, tuple[str, ...]], ...] = ()  # (classidx, names class classidx may carry)
    extra_classes: bool = False  # the copy holds classes outside the table: their images are skipped
    crop_border: int = 0  # pixels cut from every side of each image on load, as the official code does


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: its hub copy, its classes and prompt table, and the protocol the paper ran on it."""

    hub: HubSpec
    classes: int  # the labels an image is classified among (the prompt table's classes)
    prompts: str  # the published prompts CSV in data/prompts/ (columns prompt,classname,classidx)
    #: the published schedule and loss in the schedule codec's JSON form (schedules.schedule_from_dict);
    #: None: the paper published none (the default schedule runs)
    schedule: dict[str, Any] | None = None
    #: the published evaluation subset: images per class (None: the whole split)
    per_class: int | None = None


def staged(n_samples: tuple[int, ...], to_keep: tuple[int, ...], loss: str) -> dict[str, Any]:
    """A published stage-wise schedule in the codec's form (SPEC.md §2)."""
    return {"kind": "Staged", "n_samples": list(n_samples), "to_keep": list(to_keep), "loss": loss}


#: ImageNet's class order is WordNet-id order; the names of a copy are lemma lists ("tench, Tinca tinca")
#: or wnids (class folders), never the table's names: these hand-checked classes pin the order.
IMAGENET_ANCHORS = (
    (0, ("tench", "n01440764")),
    (1, ("goldfish", "n01443537")),
    (657, ("missile", "n03773504")),
    (744, ("projectile", "n04008634")),
    (836, ("sunglass", "n04355933")),
    (837, ("sunglasses", "n04356056")),
    (999, ("toilet tissue", "n15075141")),
)

#: Our dataset names -> their facts. docs/protocols.md says where each copy and mapping was checked;
#: the schedules and losses are SPEC.md §2's table, ImageNet's 4 images per class SPEC.md §8's.
DATASETS: dict[str, DatasetEntry] = {
    "cifar10": DatasetEntry(
        HubSpec("uoft-cs/cifar10", "test", image_column="img"),
        10,
        "cifar10_prompts.csv",
        staged((50, 500), (5, 1), "l1"),
    ),
    "cifar100": DatasetEntry(
        HubSpec("uoft-cs/cifar100", "test", image_column="img", label_column="fine_label", aliases=(("cra", "crab"),)),
        100,
        "cifar100_blurry_prompts.csv",
    ),
    "stl10": DatasetEntry(HubSpec("tanganke/stl10", "test"), 10, "stl10_prompts.csv", staged((100, 500), (5, 1), "l1")),
    "pets": DatasetEntry(
        HubSpec("timm/oxford-iiit-pet", "test"), 37, "pets_prompts.csv", staged((25, 250), (5, 1), "l1")
    ),
    "flowers": DatasetEntry(
        HubSpec("dpdl-benchmark/oxford_flowers102", "test"),  # the official 6,149-image test split
        102,
        "flowers_prompts.csv",
        staged((20, 50, 100, 500), (20, 10, 5, 1), "l1"),
    ),
    "food": DatasetEntry(
        HubSpec("ethz/food101", "validation"),  # the official 25,250-image test split
        101,
        "food_prompts.csv",
        staged((20, 50, 100, 500), (20, 10, 5, 1), "l2"),
    ),
    "aircraft": DatasetEntry(
        HubSpec("Donghyun99/FGVC-Aircraft", "test", label_column="variation"),  # "label" is the family
        100,
        "aircraft_prompts.csv",
        staged((20, 50, 100, 500), (20, 10, 5, 1), "l2"),
    ),
    "imagenet": DatasetEntry(
        HubSpec("ILSVRC/imagenet-1k", "validation", labels="index", anchors=IMAGENET_ANCHORS),
        1000,
        "imagenet_prompts.csv",
        staged((50, 100, 500, 1000), (500, 50, 10, 1), "l2"),
        per_class=4,  # the official numbers are on 4,000 images; the subset itself was not published
    ),
    "objectnet": DatasetEntry(
        HubSpec(None, "test", extra_classes=True, crop_border=2),  # no redistribution: a local copy
        113,
        "objectnet_prompts.csv",
        staged((50, 100, 500, 1000), (25, 10, 5, 1), "l2"),
    ),
    "mnist": DatasetEntry(HubSpec("ylecun/mnist", "test"), 10, "mnist_prompts.csv"),
}


def published_schedule_names() -> tuple[str, ...]:
    """The datasets with a published schedule: each is also a schedule name (--schedule cifar10)."""
    return tuple(name for name, entry in DATASETS.items() if entry.schedule is not None)

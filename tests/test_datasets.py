"""The paper's datasets map every label of their copies to the published prompts table's class (classidx).

Each test builds a tiny dataset with the features and column names of the hub copy that data/datasets.py
names (ClassLabel names in the copy's own order, tests/hub_classes.py), saves it with save_to_disk, opens it
through open_dataset(name, data_dir=...), and checks every class against the published prompts table: by
the class name spelled with letters and digits only (independent of the package's own matching), and by
anchors read by hand from the sources (docs/protocols.md). Rows are shuffled, so an off-by-one map fails.
"""

from __future__ import annotations

import csv
import random
import re

import numpy as np
import pytest
from PIL import Image

import hub_classes as hub
from builders import imagenet_names, objectnet_folders, table_classnames
from diffusion_classifier.data.datasets import HUB_DATASETS, _label_names, open_dataset
from diffusion_classifier.data.prompts import published_prompts
from diffusion_classifier.errors import UserInputError

datasets = pytest.importorskip("datasets")


def table_rows(name: str) -> dict[int, list[str]]:
    """classidx -> the published prompts of that class (the CSV rows)."""
    rows: dict[int, list[str]] = {}
    with published_prompts(name).open(newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(int(r["classidx"]), []).append(r["prompt"])
    return rows


def letters(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def tiny_image(k: int) -> Image.Image:
    return Image.fromarray(np.full((4, 6, 3), k % 256, dtype=np.uint8))


def one_row_per_class(n: int, seed: int = 0) -> list[int]:
    """Every class id once, shuffled: the dataset row r has class ids[r]."""
    ids = list(range(n))
    random.Random(seed).shuffle(ids)
    return ids


def save(tmp_path, columns: dict, features: dict, split: str) -> str:
    """A DatasetDict {split: the rows} written by save_to_disk, as a hub copy downloaded and saved."""
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    path = tmp_path / "copy"
    datasets.DatasetDict({split: ds}).save_to_disk(str(path))
    return str(path)


def class_label_copy(tmp_path, name: str, image_col: str, label_col: str, names: list[str], **extra):
    """The copy of a named dataset: one image per class of `names`, in shuffled rows; (its path, row classes)."""
    ids = one_row_per_class(len(names))
    columns = {image_col: [tiny_image(k) for k in ids], label_col: ids}
    features = {image_col: datasets.Image(), label_col: datasets.ClassLabel(names=names)}
    for col, (values, feature) in extra.items():
        columns[col], features[col] = [values[k] for k in ids], feature
    return save(tmp_path, columns, features, HUB_DATASETS[name].split), ids


def check_every_class(name: str, hub_names: list[str], ids: list[int], data, spelled: dict | None = None) -> None:
    """Row r (hub class ids[r]) is labelled with the table class of the same name, and nothing else is."""
    spelled = spelled or {}
    table = table_rows(name)
    assert len(data) == len(ids)
    for r, k in enumerate(ids):
        hub_name = spelled.get(hub_names[k], hub_names[k])
        label = data.labels[r]
        assert letters(label) == letters(hub_name), (r, k, hub_names[k], label)
        idx = data.class_names.index(label)
        assert any(letters(hub_name) in letters(p) for p in table[idx]), (hub_name, table[idx])
    assert sorted({data.class_names.index(lab) for lab in data.labels}) == sorted(table)  # a bijection


CATS = {"abyssinian", "bengal", "birman", "bombay", "british_shorthair", "egyptian_mau", "maine_coon", "persian"}
CATS |= {"ragdoll", "russian_blue", "siamese", "sphynx"}


def row_of(ids: list[int], hub_class: int) -> int:
    return ids.index(hub_class)


# --- one test per named dataset --------------------------------------------------------------------


def test_cifar10(tmp_path):
    path, ids = class_label_copy(tmp_path, "cifar10", "img", "label", hub.CIFAR10)
    data = open_dataset("cifar10", data_dir=path)
    check_every_class("cifar10", hub.CIFAR10, ids, data)
    assert data.labels[row_of(ids, 0)] == "airplane" and data.labels[row_of(ids, 9)] == "truck"
    assert data.prompts.name == "cifar10_prompts.csv" and data.split == "test"


def test_cifar100_maps_the_cards_typo_cra_to_crab(tmp_path):
    coarse = [f"superclass_{i}" for i in range(20)]
    path, ids = class_label_copy(
        tmp_path,
        "cifar100",
        "img",
        "fine_label",
        hub.CIFAR100_FINE,
        coarse_label=([k % 20 for k in range(100)], datasets.ClassLabel(names=coarse)),
    )
    data = open_dataset("cifar100", data_dir=path)
    check_every_class("cifar100", hub.CIFAR100_FINE, ids, data, spelled={"cra": "crab"})
    assert data.labels[row_of(ids, 26)] == "crab" and data.labels[row_of(ids, 0)] == "apple"


def test_stl10(tmp_path):
    path, ids = class_label_copy(tmp_path, "stl10", "image", "label", hub.STL10)
    data = open_dataset("stl10", data_dir=path)
    check_every_class("stl10", hub.STL10, ids, data)
    assert [data.labels[row_of(ids, k)] for k in (0, 2, 7)] == ["airplane", "car", "monkey"]


def test_pets(tmp_path):
    path, ids = class_label_copy(
        tmp_path,
        "pets",
        "image",
        "label",
        hub.PETS,
        image_id=([f"{n}_1" for n in hub.PETS], datasets.Value("string")),
        label_cat_dog=([int(n not in CATS) for n in hub.PETS], datasets.ClassLabel(names=["cat", "dog"])),
    )
    data = open_dataset("pets", data_dir=path)
    check_every_class("pets", hub.PETS, ids, data)
    assert data.labels[row_of(ids, 0)] == "abyssinian" and data.labels[row_of(ids, 36)] == "yorkshire terrier"


def test_flowers_by_name_so_class_1_is_pink_primrose(tmp_path):
    path, ids = class_label_copy(tmp_path, "flowers", "image", "label", hub.FLOWERS)
    data = open_dataset("flowers", data_dir=path)
    check_every_class("flowers", hub.FLOWERS, ids, data)
    # The dataset's class number 1 (imagelabels.mat, 1-based) is pink primrose: classidx 0 of the table.
    assert data.labels[row_of(ids, 0)] == "pink primrose" == data.class_names[0]
    assert data.labels[row_of(ids, 101)] == "blackberry lily" == data.class_names[101]
    assert data.labels[row_of(ids, 15)] == "globe flower"  # the card's "globe-flower"


def test_flowers_copy_with_numbered_folders_is_refused_not_mapped(tmp_path):
    """nelorth/oxford-flowers: names "1".."102" sorted as strings ("1", "10", "100", ...), and only 1,020
    test images: its order is not the table's, and no name matches: it must fail, not run at chance."""
    numbered = sorted(str(i) for i in range(1, 103))
    path, _ = class_label_copy(tmp_path, "flowers", "image", "label", numbered)
    with pytest.raises(UserInputError, match="'1'.*not a class of flowers_prompts.csv"):
        open_dataset("flowers", data_dir=path)


def test_food_maps_by_name_across_the_cheesecake_swap(tmp_path):
    path, ids = class_label_copy(tmp_path, "food", "image", "label", hub.FOOD)
    data = open_dataset("food", data_dir=path)
    check_every_class("food", hub.FOOD, ids, data)
    # The copy's 16 is cheesecake and 17 cheese_plate; the table (torchvision's sorted order) has them swapped.
    assert data.labels[row_of(ids, 16)] == "cheesecake" == data.class_names[17]
    assert data.labels[row_of(ids, 17)] == "cheese_plate" == data.class_names[16]
    assert data.split == "validation"  # the official test split's 25,250 images


def test_aircraft_reads_the_variant_column_not_the_family(tmp_path):
    fam = hub.AIRCRAFT_FAMILY
    path, ids = class_label_copy(
        tmp_path,
        "aircraft",
        "image",
        "variation",
        hub.AIRCRAFT_VARIATION,
        label=([k % len(fam) for k in range(100)], datasets.ClassLabel(names=fam)),
        manufacturer=([k % 30 for k in range(100)], datasets.ClassLabel(names=[f"maker {i}" for i in range(30)])),
    )
    data = open_dataset("aircraft", data_dir=path)
    check_every_class("aircraft", hub.AIRCRAFT_VARIATION, ids, data)
    assert data.labels[row_of(ids, 95)] == "707-320" == data.class_names[0]
    assert data.labels[row_of(ids, 0)] == "MD-80" == data.class_names[86]
    assert {data.labels[row_of(ids, hub.AIRCRAFT_VARIATION.index(n))] for n in ("F-16A/B", "F/A-18")} == {
        "F-16A_B",
        "F_A-18",
    }


def test_imagenet_label_id_is_the_classidx_and_shared_names_stay_two_classes(tmp_path):
    names = imagenet_names()
    path, ids = class_label_copy(tmp_path, "imagenet", "image", "label", names)
    data = open_dataset("imagenet", data_dir=path)
    table = table_classnames("imagenet")
    assert data.labels == [table[k] for k in ids]  # every class: hub id k is classidx k
    assert [data.labels[row_of(ids, k)] for k in (0, 1, 7, 999)] == ["tench", "goldfish", "rooster", "toilet paper"]
    assert data.labels[row_of(ids, 657)] == data.labels[row_of(ids, 744)] == "missile"
    assert data.labels[row_of(ids, 836)] == data.labels[row_of(ids, 837)] == "sunglasses"
    assert len(data.class_names) == 1000 and data.split == "validation"


def test_label_names_returns_class_indices_so_shared_names_do_not_merge():
    names = imagenet_names()
    ids, classes = _label_names([657, 744, 836, 837, 0], names, published_prompts("imagenet"), HUB_DATASETS["imagenet"])
    assert ids == [657, 744, 836, 837, 0]
    assert classes[657] == classes[744] == "missile" and len(classes) == 1000


@pytest.mark.parametrize(
    "reorder",
    [
        lambda names: names[1:] + names[:1],  # shifted by one
        lambda names: sorted(names),  # sorted by name, as a folder-built copy would be
    ],
)
def test_imagenet_copy_in_another_order_is_refused(tmp_path, reorder):
    path, _ = class_label_copy(tmp_path, "imagenet", "image", "label", reorder(imagenet_names()))
    with pytest.raises(UserInputError, match="not in the order of imagenet_prompts.csv"):
        open_dataset("imagenet", data_dir=path)


def test_imagenet_val_in_wnid_folders(tmp_path):
    """A local ImageNet val in the layout the official ImageFolder reads: folder k (sorted wnids) is class k."""
    anchors = dict((k, wnids[-1]) for k, wnids in HUB_DATASETS["imagenet"].anchors)
    prefixes = [(657, "n02"), (744, "n038"), (837, "n041"), (1000, "n05")]  # fillers sort between the anchors
    root = tmp_path / "val"
    for k in range(1000):
        wnid = anchors.get(k) or next(p for end, p in prefixes if k < end) + f"{k:06d}"
        (root / wnid).mkdir(parents=True)
        tiny_image(k).save(root / wnid / f"ILSVRC2012_val_{k:08d}.JPEG", format="JPEG")
    data = open_dataset("imagenet", data_dir=str(root))
    table = table_classnames("imagenet")
    assert data.labels == table  # one image per class, in class order
    assert data.image(0).size == (6, 4)


def test_objectnet_class_folders_skip_classes_outside_the_table_and_crop_the_frame(tmp_path):
    folders = objectnet_folders(tmp_path / "images")
    data = open_dataset("objectnet", data_dir=str(tmp_path / "images"))
    table = table_classnames("objectnet")
    assert data.labels == table  # 113 images, in folder order; air_freshener and bathrobe skipped
    assert data.labels[0] == "alarm_clock" and data.prompts.name == "objectnet_prompts.csv"
    img = data.image(0)
    assert img.size == (8, 6)  # 2 px cut from every side, as the official loader
    assert np.asarray(img)[0, 0].tolist() == [folders.index("alarm_clock")] * 3  # no red frame left


def test_objectnet_save_to_disk_copy_with_folder_names(tmp_path):
    folders = sorted([*table_classnames("objectnet"), "air_freshener"])
    ids = one_row_per_class(len(folders))
    path = save(
        tmp_path,
        {"image": [tiny_image(k) for k in ids], "label": ids},
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=folders)},
        "test",
    )
    data = open_dataset("objectnet", data_dir=path)
    kept = [k for k in ids if folders[k] != "air_freshener"]
    assert data.labels == [folders[k] for k in kept]


def test_objectnet_without_a_local_copy_says_how_to_give_one():
    with pytest.raises(UserInputError, match="--data-dir"):
        open_dataset("objectnet")


def test_mnist(tmp_path):
    path, ids = class_label_copy(tmp_path, "mnist", "image", "label", hub.MNIST)
    data = open_dataset("mnist", data_dir=path)
    check_every_class("mnist", hub.MNIST, ids, data)


def test_every_named_dataset_is_tested_here():
    tested = {n.removeprefix("test_").split("_")[0] for n in globals() if n.startswith("test_")}
    assert set(HUB_DATASETS) <= tested


def test_integer_labels_without_names_are_the_classidx_and_bad_ones_fail(tmp_path):
    path = save(
        tmp_path,
        {"img": [tiny_image(0), tiny_image(1)], "label": [9, 0]},
        {"img": datasets.Image(), "label": datasets.Value("int64")},
        "test",
    )
    assert open_dataset("cifar10", data_dir=path).labels == ["truck", "airplane"]
    bad = save(
        tmp_path / "b",
        {"img": [tiny_image(0)], "label": [10]},
        {"img": datasets.Image(), "label": datasets.Value("int64")},
        "test",
    )
    with pytest.raises(UserInputError, match="label 10 is not a class of cifar10_prompts.csv"):
        open_dataset("cifar10", data_dir=bad)

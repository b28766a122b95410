"""The published SD protocols end to end on a tiny SD model: a copy in the hub's schema goes through
`eval --dataset NAME` with the published prompts, and each record carries the table's class of its image."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import hub_classes as hub
from diffusion_classifier.cli import main
from diffusion_classifier.data.datasets import HUB_DATASETS
from diffusion_classifier.data.prompts import published_prompts
from diffusion_classifier.runs import RunStore

datasets = pytest.importorskip("datasets")


def hub_copy(tmp_path, name: str, names: list[str], hub_ids: list[int]) -> str:
    """A save_to_disk copy of a named dataset with the hub's columns: one image per id in `hub_ids`."""
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


def published(name: str) -> list[dict[str, str]]:
    with published_prompts(name).open(newline="") as f:
        return list(csv.DictReader(f))


def run_eval(capsys, tmp_path, name: str, copy: str, *schedule: str) -> RunStore:
    run_dir = tmp_path / "run"
    argv = ["eval", "--dataset", name, "--data-dir", copy, "--out", run_dir, "--device", "cpu", *schedule]
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    return RunStore(run_dir)


@pytest.mark.parametrize(
    ("name", "names", "hub_ids", "labels"),
    [
        ("cifar10", hub.CIFAR10, [9, 0], ["truck", "airplane"]),
        ("pets", hub.PETS, [36, 0], ["yorkshire terrier", "abyssinian"]),
        ("food", hub.FOOD, [16, 17], ["cheesecake", "cheese_plate"]),  # swapped ids in the copy
    ],
)
def test_sd_protocol_runs_with_the_published_prompts_and_table_labels(
    name, names, hub_ids, labels, tiny_sd_path, tmp_path, capsys
):
    copy = hub_copy(tmp_path, name, names, hub_ids)
    store = run_eval(capsys, tmp_path, name, copy, "--model", tiny_sd_path, "--timesteps", "500")
    records = store.records()
    assert [records[i]["label"] for i in range(len(hub_ids))] == labels
    rows = published(name)
    assert all(r["calls"] == len(rows) for r in records.values())  # every published prompt, one timestep
    config = json.loads(store.config_path.read_text())
    assert config["dataset"] == name and config["split"] == HUB_DATASETS[name].split
    assert config["candidates"]["conditions"] == [r["prompt"] for r in rows]


@pytest.mark.slow
def test_cifar10_with_the_published_schedule_costs_the_published_calls(tiny_sd_path, tmp_path, capsys):
    copy = hub_copy(tmp_path, "cifar10", hub.CIFAR10, [3])
    store = run_eval(capsys, tmp_path, "cifar10", copy, "--model", tiny_sd_path)  # the dataset's defaults
    record = store.records()[0]
    assert record["label"] == "cat" and record["calls"] == 2750  # 10 x 50, then 5 x 450 new timesteps
    config = json.loads(store.config_path.read_text())
    assert config["loss"] == "l1"

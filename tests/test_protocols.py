"""Every published protocol of docs/protocols.md, end to end: the page's own command, on a tiny model of the
same family and a synthetic copy of the dataset in its hub's schema.

The commands are read from the page's tables and adapted only where a test must: the tiny model (at 8 px under the
published SD schedules), a run directory under tmp_path, the synthetic copy (--data-dir), --device cpu, a noise file
of the tiny model's shape.
Each row's schedule, loss and model calls per image are checked against the page (schedules.count_calls), each
run's records carry class indices, and `report` reads each run. The fast tests swap the row's schedule for one
timestep (`--timesteps 500`: one call per prompt; for DiT four timesteps: one image there costs 1,000 x 250
calls under the published schedule); the slow ones run the row's command with its own schedule.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hub_classes as hub
from builders import hub_copy, imagenet_names, table_classnames
from diffusion_classifier.cli import main
from diffusion_classifier.core.schedules import (
    PUBLISHED,
    Full,
    count_calls,
    get_schedule,
    interval_grid,
    schedule_to_dict,
)
from diffusion_classifier.data.datasets import HUB_DATASETS
from diffusion_classifier.data.prompts import published_prompts, read_prompts_csv
from diffusion_classifier.models.stable_diffusion import StableDiffusionModel
from diffusion_classifier.runs.engine import RunStore
from dit_original import CHANNELS, random_original_dit, save_dit_pipeline

pytest.importorskip("datasets")

DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"


# --- the page's rows -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One published result of docs/protocols.md: its command (after `diffusion-classifier`), loss, calls, test."""

    result: str
    argv: tuple[str, ...]
    schedule: str
    loss: str
    calls: int
    tests: tuple[str, ...]  # the tests the page names for the row

    def flag(self, name: str) -> str | None:
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None


def page_rows() -> dict[str, Row]:
    """The rows of the page's tables whose command cell holds a diffusion-classifier command, by result."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        command = re.fullmatch(r"`diffusion-classifier (.+)`", cells[1]) if len(cells) == 8 else None
        if command:
            calls = int(re.match(r"[\d,]+", cells[5]).group().replace(",", ""))
            tests = tuple(re.findall(r"`(test_\w+)", cells[7]))
            rows[cells[0]] = Row(cells[0], tuple(command.group(1).split()), cells[3], cells[4], calls, tests)
    return rows


ROWS = page_rows()
SD_ROWS = [r for r in ROWS.values() if r.argv[0] == "eval" and "DiT" not in r.result]
DIT_ROWS = [r for r in ROWS.values() if "DiT" in r.result]


def adapted(row: Row, replace: dict[str, str], drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> list[str]:
    """The row's command with some flags' values replaced (or added), some flags (and their values) dropped."""
    argv, i = [], 0
    while i < len(row.argv):
        a = row.argv[i]
        if a in drop:
            i += 2
            continue
        argv.append(a)
        if a in replace:
            argv.append(str(replace.pop(a)))
            i += 1
        i += 1
    for flag, value in replace.items():
        argv += [flag, str(value)]
    return [*argv, "--device", "cpu", *add]


def run(argv: list[str], capsys) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err


def n_prompts(dataset: str) -> int:
    return len(read_prompts_csv(published_prompts(dataset)))


def test_the_page_has_every_published_result_and_each_names_its_test():
    datasets = sorted(r.flag("--dataset") for r in SD_ROWS)
    assert datasets == sorted(PUBLISHED) and len(DIT_ROWS) == 2
    assert [r.argv[0] for r in ROWS.values()].count("winoground") == 1
    assert all(r.tests and set(r.tests) <= set(globals()) for r in ROWS.values())


@pytest.mark.parametrize("row", SD_ROWS, ids=lambda r: r.result)
def test_each_sd_row_states_its_schedule_loss_and_calls(row):
    dataset = row.flag("--dataset")
    schedule, loss = get_schedule(row.flag("--schedule"))
    assert (row.flag("--schedule"), row.flag("--model")) == (dataset, "stabilityai/stable-diffusion-2-base")
    assert schedule == PUBLISHED[dataset][0] and loss == row.loss
    keep, samples = (" ".join(map(str, x)) for x in (schedule.to_keep, schedule.n_samples))
    assert row.schedule == f"{keep} / {samples}"
    assert count_calls(schedule, n_prompts(dataset)) == row.calls


def test_dit_and_winoground_rows_state_their_calls():
    for row in DIT_ROWS:
        schedule, loss = get_schedule(row.flag("--schedule"))
        assert schedule == Full(interval_grid(4)) and loss == row.loss == "l2"
        assert count_calls(schedule, 1000) == row.calls == 250_000
    (wino,) = [r for r in ROWS.values() if r.argv[0] == "winoground"]
    assert len(interval_grid(int(wino.flag("--t-interval")))) * 4 == wino.calls == 4000  # 4 pairs per example


# --- Stable Diffusion 2.0: eight datasets ----------------------------------------------------------------------

#: dataset -> (the hub copy's ClassLabel names, the hub ids of its images, the table classes they must get)
HUB_IMAGES = {
    "cifar10": (hub.CIFAR10, [9, 0], ["truck", "airplane"]),
    "stl10": (hub.STL10, [2, 7], ["car", "monkey"]),
    "pets": (hub.PETS, [36, 0], ["yorkshire terrier", "abyssinian"]),
    "flowers": (hub.FLOWERS, [15, 0], ["globe flower", "pink primrose"]),
    "food": (hub.FOOD, [16, 17], ["cheesecake", "cheese_plate"]),  # swapped ids in the copy
    "aircraft": (hub.AIRCRAFT_VARIATION, [95, 0], ["707-320", "MD-80"]),  # variant column, not the table's order
    "imagenet": (imagenet_names(), [657] * 5 + [744] * 4, None),  # one name, two classes; --per-class 4 picks 8
}
OBJECTNET = ["alarm_clock", "banana", "air_freshener"]  # two of the table's classes and one it skips


def sd_copy(tmp_path, dataset: str, one: bool = False) -> tuple[str, list[int]]:
    """A synthetic copy of the dataset (the hub's schema, ObjectNet's folders); (its path, the classidx per image)."""
    if dataset == "objectnet":
        root, table = tmp_path / "objectnet" / "images", table_classnames("objectnet")
        rng = np.random.default_rng(0)
        for name in OBJECTNET[-2:] if one else OBJECTNET:  # one: banana, and a class outside the table
            (root / name).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (26, 30, 3), dtype=np.uint8)).save(root / name / "0a1b.png")
        return str(root), [table.index(n) for n in sorted(OBJECTNET[-2:] if one else OBJECTNET) if n in table]
    names, ids, labels = HUB_IMAGES[dataset]
    ids = ids[:1] if one else ids
    table = table_classnames(dataset)
    expected = ids if labels is None else [table.index(n) for n in labels[: len(ids)]]
    return hub_copy(tmp_path, dataset, names, ids), expected


def check_records(store: RunStore, expected: list[int], dataset: str, calls: int) -> dict[int, dict]:
    records = store.records()
    assert sorted(r["label_index"] for r in records.values()) == sorted(expected)
    table = table_classnames(dataset)
    for r in records.values():
        assert r["status"] == "ok" and r["calls"] == calls
        assert r["label"] == table[r["label_index"]] and r["prediction"] == table[r["prediction_index"]]
    return records


def check_report(run_dir, capsys, n: int) -> None:
    assert main(["report", str(run_dir), "--no-figures", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == n


@pytest.mark.parametrize("row", SD_ROWS, ids=lambda r: r.result)
def test_sd_protocol_runs_end_to_end(row, tiny_sd_path, tmp_path, capsys):
    """The row's command on the tiny SD model, one timestep per prompt: every published prompt is a candidate,
    each image gets the table's class of its hub label, records carry class indices, the report reads the run."""
    dataset = row.flag("--dataset")
    copy, expected = sd_copy(tmp_path, dataset)
    out = tmp_path / "run"
    replace = {"--model": tiny_sd_path, "--out": out, "--data-dir": copy}
    run(adapted(row, replace, drop=("--schedule",), add=("--timesteps", "500")), capsys)
    store = RunStore(out)
    if dataset == "imagenet":  # --per-class 4: four of each class, saved where the official --subset_path reads
        expected = [657] * 4 + [744] * 4
        assert sorted(np.load(out / "subset.npy").tolist()) == sorted(store.records())
    check_records(store, expected, dataset, calls=n_prompts(dataset))  # one timestep: one call per prompt
    config = json.loads(store.config_path.read_text())
    assert (config["dataset"], config["split"]) == (dataset, HUB_DATASETS[dataset].split)
    assert config["candidates"]["conditions"] == list(read_prompts_csv(published_prompts(dataset)).conditions)
    check_report(out, capsys, len(expected))


@pytest.mark.slow
@pytest.mark.parametrize("row", SD_ROWS, ids=lambda r: r.result)
def test_sd_protocol_with_its_published_schedule(row, tiny_sd_path, tmp_path, capsys):
    """The row's command as the page gives it (its named schedule) on one image: the page's calls and loss. The
    tiny model runs at 8 px (4 x 4 latents, a third of the time per call: ImageNet's row is 124,500 calls); the
    fast test above runs it at its own 16 px."""
    dataset = row.flag("--dataset")
    copy, expected = sd_copy(tmp_path, dataset, one=True)
    out = tmp_path / "run"
    replace = {"--model": tiny_sd_path, "--out": out, "--data-dir": copy}
    run(adapted(row, replace, add=("--batch-size", "250", "--image-size", "8")), capsys)
    store = RunStore(out)
    check_records(store, expected, dataset, calls=row.calls)
    config = json.loads(store.config_path.read_text())
    assert config["schedule"] == schedule_to_dict(PUBLISHED[dataset][0]) and config["loss"] == row.loss
    check_report(out, capsys, 1)


# --- DiT-XL/2 256 and 512 -------------------------------------------------------------------------------------

#: the tiny stand-ins of the two resolutions: 4 x 4 and 8 x 8 latents (8 and 16 px images), 1,000 classes
DIT_LATENT = {"DiT-XL/2 256": 4, "DiT-XL/2 512": 8}


@pytest.fixture(scope="module")
def dit_models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """result -> (a tiny original-DiT pipeline with ImageNet's 1,000 classes, its noise file as save_noise.py)."""
    out = {}
    for result, latent in DIT_LATENT.items():
        folder = tmp_path_factory.mktemp(f"dit{latent}")
        save_dit_pipeline(random_original_dit(0, latent, 1000), folder)
        torch.manual_seed(42)
        torch.save(torch.randn(1024, CHANNELS, latent, latent), folder / "noise.pt")
        out[result] = folder, folder / "noise.pt"
    return out


def dit_run(row: Row, dit_models, tmp_path, capsys, hub_ids: list[int], drop=(), extra=()) -> RunStore:
    folder, noise = dit_models[row.result]
    copy = hub_copy(tmp_path, "imagenet", imagenet_names(), hub_ids)
    out = tmp_path / "run"
    replace = {"--model": folder, "--noise-file": noise, "--out": out, "--data-dir": copy}
    run(adapted(row, replace, drop=drop, add=extra), capsys)
    return RunStore(out)


@pytest.mark.parametrize("row", DIT_ROWS, ids=lambda r: r.result)
def test_dit_protocol_runs_end_to_end(row, dit_models, tmp_path, capsys):
    """The row's command with four timesteps instead of its 250 (its 250,000 calls per image run in the slow
    test below): every one of the 1,000 classes by index, records with class indices, the report."""
    four = ("--timesteps", "2:1000:250")
    store = dit_run(row, dit_models, tmp_path, capsys, [657, 744], ("--schedule",), ("--batch-size", "250", *four))
    check_records(store, [657, 744], "imagenet", calls=4 * 1000)  # four timesteps for each class
    config = json.loads(store.config_path.read_text())
    assert config["candidates"]["class_ids"] == list(range(1000)) and config["loss"] == "l2"
    check_report(store.dir, capsys, 2)


@pytest.mark.slow
@pytest.mark.parametrize("row", DIT_ROWS, ids=lambda r: r.result)
def test_dit_protocol_with_its_published_schedule(row, dit_models, tmp_path, capsys):
    store = dit_run(row, dit_models, tmp_path, capsys, [836], extra=("--batch-size", "250"))
    check_records(store, [836], "imagenet", calls=row.calls)
    assert json.loads(store.config_path.read_text())["schedule"] == schedule_to_dict(get_schedule("dit")[0])


# --- Winoground -------------------------------------------------------------------------------------------------


def test_winoground_protocol_runs_end_to_end(tiny_sd_path, tmp_path, capsys, monkeypatch):
    """The published command (t-interval 1: 1,000 timesteps per pair) on one example whose images are RGBA and
    palette PNGs: 4,000 UNet evaluations, a record per example, the report."""
    (row,) = [r for r in ROWS.values() if r.argv[0] == "winoground"]
    root = tmp_path / "winoground"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (21, 30, 4), dtype=np.uint8), "RGBA").save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 19, 3), dtype=np.uint8)).quantize(16).save(root / "images" / "b.png")
    example = {"id": 0, "caption_0": "a cat on a mat", "caption_1": "a mat on a cat", "image_0": "a", "image_1": "b"}
    (root / "examples.jsonl").write_text(json.dumps(example | {"collapsed_tag": "Relation"}) + "\n")
    torch.manual_seed(42)
    torch.save(torch.randn(1024, 4, 8, 8), tmp_path / "noise.pt")
    rows = []
    predict = StableDiffusionModel.predict_noise
    monkeypatch.setattr(
        StableDiffusionModel, "predict_noise", lambda m, x, t, c: rows.append(len(x)) or predict(m, x, t, c)
    )
    out = tmp_path / "run"
    replace = {"--model": tiny_sd_path, "--noise-file": tmp_path / "noise.pt", "--out": out, "--data-dir": root}
    run(adapted(row, replace), capsys)
    assert sum(rows) == row.calls
    config = json.loads((out / "config.json").read_text())
    assert config["t_interval"] == 1 and config["examples"] == 1
    assert [r["status"] for r in RunStore(out).records().values()] == ["ok"]
    assert main(["report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1

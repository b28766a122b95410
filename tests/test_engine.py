"""The run engine (any unit, resume, retry, shards), config as data, the schedule codec, the dataset registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from builders import comparable, gaussian_dataset
from diffusion_classifier import ClassifierConfig, Selection, evaluate
from diffusion_classifier.bench.throughput import DATASET_CLASSES
from diffusion_classifier.config import default_schedule
from diffusion_classifier.core.schedules import (
    DEFAULT_SCHEDULE,
    PUBLISHED,
    SCHEDULES,
    Full,
    Racing,
    Staged,
    schedule_from_dict,
    schedule_to_dict,
)
from diffusion_classifier.data.datasets import HUB_DATASETS
from diffusion_classifier.data.images import ImageOptions
from diffusion_classifier.data.prompts import published_prompts, read_prompts_csv
from diffusion_classifier.data.registry import DATASETS
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.names import SCHEDULES as SCHEDULE_NAMES
from diffusion_classifier.runs.engine import RunStore, Shard, StoredConfig, Work, execute
from test_schedule_conformance import KIND_CASES

# --- the schedule codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES) + sorted(KIND_CASES))
def test_every_registered_schedule_round_trips_through_the_codec(name):
    """Every named schedule, and one schedule of each kind with fields away from their defaults."""
    sched, loss = SCHEDULES[name] if name in SCHEDULES else (KIND_CASES[name], "huber")
    form = json.loads(json.dumps(schedule_to_dict(sched, loss)))  # as stored
    assert schedule_from_dict(form) == (sched, loss)
    assert schedule_from_dict({k: v for k, v in form.items() if k != "loss"}) == (sched, None)


def test_the_codec_reads_the_older_model_config_forms():
    assert schedule_from_dict({"name": "racing", "params": {"alpha": 0.01}}) == (Racing(alpha=0.01), "l2")
    assert schedule_from_dict({"name": "cifar10"}) == PUBLISHED["cifar10"]  # a named schedule keeps its loss
    assert schedule_from_dict({"timesteps": [250, 750], "loss": "l1"}) == (Full((250, 750)), "l1")
    for bad, words in [
        ({"kind": "Spiral"}, "unknown schedule kind"),
        ({"kind": "Racing", "speed": 3}, "no field 'speed'"),
        ({"kind": "Staged", "n_samples": [5]}, "to_keep"),
        ({"kind": "Full", "timesteps": [1], "loss": "l3"}, "unknown loss"),
        ({"name": "nope"}, "unknown schedule"),
    ]:
        with pytest.raises(UserInputError, match=words):
            schedule_from_dict(bad, "classifier_config.json")


# --- config as data --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        ClassifierConfig(),
        ClassifierConfig(schedule="racing", racing={"alpha": 0.01, "cap": 50}, loss="l1"),
        ClassifierConfig(
            schedule=Staged((5, 10), (2, 1)),
            loss="huber",
            seed=9,
            noise_file="noise.npy",
            weights="exp",
            temperature=2.5,
            batch_size=None,
            shortlist="clip:x",
            shortlist_k=3,
            image_options=ImageOptions(max_pixels=1000, exif_orientation=True),
        ),
    ],
)
def test_classifier_config_round_trips(config):
    stored = json.loads(json.dumps(config.to_dict()))
    assert ClassifierConfig.from_dict(stored) == config


def test_classifier_config_refuses_bad_settings_before_any_model():
    for kw, words in [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"batch_size": 0}, "batch-size"),
        ({"loss": "l3"}, "unknown loss"),
        ({"racing": {"speed": 2}}, "speed"),
    ]:
        with pytest.raises(UserInputError, match=words):
            ClassifierConfig(**kw)
    with pytest.raises(UserInputError, match="unknown setting 'colour'"):
        ClassifierConfig.from_dict({"colour": "red"})


def test_the_schedule_default_resolves_in_one_place():
    clf, _, _ = gaussian_dataset(8)
    model = clf.model
    assert model.default_schedule is None  # the adapter interface's explicit default
    assert default_schedule(model) == DEFAULT_SCHEDULE == clf.default_schedule
    assert default_schedule(model, "pets") == PUBLISHED["pets"]  # the dataset's published protocol
    model.default_schedule = (Racing(alpha=0.01), "l1")
    assert default_schedule(model, "pets") == (Racing(alpha=0.01), "l1")  # the model's own comes first
    # racing overrides keep the default race's other fields; the resolved config names everything
    resolved = ClassifierConfig(racing={"cap": 40}).resolved(model, "pets")
    assert (resolved.schedule, resolved.loss, resolved.racing) == (Racing(alpha=0.01, cap=40), "l1", {})
    with pytest.raises(UserInputError, match="outside the model's range"):
        ClassifierConfig(schedule=Full((5, 1000))).resolved(model)


# --- the dataset registry ----------------------------------------------------------------------------------


def test_every_dataset_table_derives_from_the_registry():
    assert {name: entry.hub for name, entry in DATASETS.items()} == HUB_DATASETS
    published = {name for name, entry in DATASETS.items() if entry.schedule is not None}
    assert set(PUBLISHED) == published and published <= set(SCHEDULE_NAMES)
    assert {k: v for k, v in DATASET_CLASSES.items() if k != "dit"} == {n: DATASETS[n].classes for n in published}
    assert DATASETS["imagenet"].per_class == 4  # SPEC.md §8: the official numbers are on 4 images per class


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_each_registry_entry_names_its_prompt_table_and_class_count(name):
    table = read_prompts_csv(published_prompts(name))
    assert len(table.classes) == DATASETS[name].classes


# --- the engine ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountConfig(StoredConfig):
    """A toy run kind: squares of 0..n-1."""

    n: int
    versions: dict[str, str] = field(default_factory=dict)

    KIND = "count"


def squares(n: int, fail: set[int], log: list[int]) -> Work:
    def records(todo, rank):
        for i in todo:
            log.append(i)
            yield (
                {"index": i, "status": "failed", "error": "no"}
                if i in fail
                else {"index": i, "status": "ok", "sq": i * i}
            )

    return Work(CountConfig(n), tuple(range(n)), records, unit="numbers")


def test_the_engine_runs_any_unit_resumes_retries_and_shards(tmp_path):
    store, tried = RunStore(tmp_path / "run", CountConfig), []
    first = execute(lambda: squares(6, {2, 5}, tried), store)
    assert [first[i]["status"] for i in range(6)] == ["ok", "ok", "failed", "ok", "ok", "failed"]
    again = execute(lambda: squares(6, set(), tried), store)  # only the failed units are tried again
    assert tried == [0, 1, 2, 3, 4, 5, 2, 5] and all(r["status"] == "ok" for r in again.values())
    assert {i: r["sq"] for i, r in again.items()} == {i: i * i for i in range(6)}
    with pytest.raises(UserInputError, match="n differ"):
        execute(lambda: squares(7, set(), tried), store)  # another configuration: refused
    with pytest.raises(UserInputError, match="holds a run of `count --out`"):
        RunStore(tmp_path / "run").read_config()  # an eval store does not read it as its own

    sharded, log1 = RunStore(tmp_path / "sharded", CountConfig), []
    execute(lambda: squares(5, set(), log1), sharded, Shard(1, 2))
    merged = execute(lambda: squares(5, set(), log1), sharded, Shard(0, 2))
    assert log1 == [1, 3, 0, 2, 4] and {i: r["sq"] for i, r in merged.items()} == {i: i * i for i in range(5)}
    in_memory = execute(lambda: squares(3, {1}, []))
    assert [in_memory[i]["status"] for i in range(3)] == ["ok", "failed", "ok"] and not (tmp_path / "none").exists()


def test_evaluate_from_python_resumes_and_retries_a_failed_image(tmp_path):
    broken = {3}
    clf, dataset, _ = gaussian_dataset(8, broken=broken)
    config = ClassifierConfig(schedule=Full((100, 400, 700)), seed=3)
    summary = evaluate(clf, dataset, tmp_path / "run", config=config, model_name="gauss", shard=Shard())
    assert (summary.n, summary.failed, summary.calls_per_image) == (7, 1, 4 * 3)
    files = [p.read_bytes() for p in RunStore(tmp_path / "run").record_files()]
    broken.clear()  # the image is fixed: a rerun classifies it alone
    summary = evaluate(clf, dataset, tmp_path / "run", config=config, model_name="gauss", shard=Shard())
    assert (summary.n, summary.failed) == (8, 0)
    after = [p.read_bytes() for p in RunStore(tmp_path / "run").record_files()]
    assert after[0].startswith(files[0]) and after[0].count(b"\n") == files[0].count(b"\n") + 1
    part = evaluate(clf, dataset, tmp_path / "part", config=config, selection=Selection(limit=3), shard=Shard())
    assert part.n == 3 and (tmp_path / "part" / "subset.npy").is_file()


def test_a_runs_config_json_rebuilds_the_settings_and_the_records(tmp_path):
    clf, dataset, _ = gaussian_dataset(8)
    config = ClassifierConfig(schedule="racing", racing={"cap": 30}, seed=5, temperature=3.0, weights="exp")
    evaluate(clf, dataset, tmp_path / "a", config=config, model_name="gauss", shard=Shard())
    stored = RunStore(tmp_path / "a").require_config()
    rebuilt = stored.classifier_config()
    assert rebuilt == config.resolved(clf.model, "gauss")
    evaluate(clf, dataset, tmp_path / "b", config=rebuilt, prompts=stored.candidates_obj(), model_name="gauss",
             shard=Shard())  # fmt: skip
    assert comparable(RunStore(tmp_path / "b").records()) == comparable(RunStore(tmp_path / "a").records())
    assert RunStore(tmp_path / "b").require_config().identity() == stored.identity()


def test_runs_written_before_the_classifier_config_still_resume(tmp_path):
    """A config.json without batch_size, max_image_pixels or options (the demo's older runs) resumes."""
    clf, dataset, _ = gaussian_dataset(4)
    config = ClassifierConfig(schedule=Full((100, 700)))
    evaluate(clf, dataset, tmp_path / "run", config=config, model_name="gauss", shard=Shard())
    path = tmp_path / "run" / "config.json"
    old = json.loads(path.read_text())
    for key in ("batch_size", "max_image_pixels"):
        del old[key]
    old["options"] = {}
    path.write_text(json.dumps(old))
    assert evaluate(clf, dataset, tmp_path / "run", config=config, model_name="gauss", shard=Shard()).n == 4

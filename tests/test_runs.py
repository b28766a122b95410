"""Evaluation runs in process (Gaussian model): the crash-safe store, resume, configuration checks, datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier import DiffusionClassifier, Full
from diffusion_classifier.data.datasets import EvalDataset, open_dataset, read_subset_file, select_indices
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.models.gaussian import GaussianClassModel
from diffusion_classifier.runs import (
    EvalJob,
    RecordWriter,
    RunStore,
    Shard,
    eval_candidates,
    make_config,
    read_records,
    run_eval,
)

SCHEDULE = Full((100, 400, 700))


def gaussian_setup(n_images: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = GaussianClassModel(torch.randn(4, 2, 2, 2, generator=gen) * 2, std=0.7)
    ys = torch.arange(n_images) % 4
    xs = model.sample(ys, generator=gen)
    dataset = EvalDataset.from_names("gauss", "test", [str(int(y)) for y in ys], lambda i: xs[i], model.class_names)
    return DiffusionClassifier(model), dataset, xs


def make_job(clf, dataset, indices=None, **kw) -> EvalJob:
    indices = tuple(range(len(dataset))) if indices is None else indices
    kw.setdefault("schedule", SCHEDULE)
    kw.setdefault("loss", "l2")
    return EvalJob(dataset, indices, eval_candidates(clf, dataset, indices), **kw)


def start(tmp_path, clf, job, name="run") -> RunStore:
    store = RunStore(tmp_path / name)
    store.claim(make_config("gauss", job))
    return store


def comparable(records: dict) -> dict:
    """Records without the fields that vary between equal runs (time, which process)."""
    return {i: {k: v for k, v in r.items() if k not in ("seconds", "rank")} for i, r in records.items()}


def test_records_match_the_classify_api(tmp_path):
    clf, dataset, xs = gaussian_setup()
    job = make_job(clf, dataset, seed=3)
    store = start(tmp_path, clf, job)
    assert run_eval(clf, job, store) == len(dataset)
    records = store.records()
    assert sorted(records) == list(range(len(dataset)))
    for i, rec in records.items():
        direct = clf(xs[i], schedule=SCHEDULE, loss="l2", seed=3)
        assert (rec["prediction"], rec["prediction_index"]) == (direct.prediction, direct.prediction_index)
        assert [(r["class_index"], r["label"], r["mean_error"], r["probability"]) for r in rec["ranking"]] == [
            (s["class_index"], s["label"], -s["score"], s["probability"]) for s in direct.scores
        ]
        assert rec["calls"] == direct.calls == 3 * 4
        assert (rec["label"], rec["label_index"]) == (dataset.labels[i], dataset.label_ids[i])


def test_resume_skips_finished_images_and_matches_one_run(tmp_path):
    clf, dataset, _ = gaussian_setup()
    whole = make_job(clf, dataset)
    one = start(tmp_path, clf, whole, "one")
    run_eval(clf, whole, one)

    resumed = start(tmp_path, clf, whole, "resumed")
    part = make_job(clf, dataset, indices=(0, 1, 2, 3, 4))  # as if the first run died after 5 images
    run_eval(clf, part, resumed)
    assert run_eval(clf, whole, resumed) == len(dataset) - 5  # only the rest is classified
    assert run_eval(clf, whole, resumed) == 0
    lines = [r["index"] for p in resumed.record_files() for r in read_records(p)]
    assert sorted(lines) == list(range(len(dataset)))  # each image written once
    assert comparable(resumed.records()) == comparable(one.records())


def test_shards_are_disjoint_complete_and_equal_one_process(tmp_path):
    clf, dataset, _ = gaussian_setup(n_images=11)
    job = make_job(clf, dataset)
    parts = [Shard(r, 3).take(job.indices) for r in range(3)]
    assert sorted(sum(parts, ())) == list(job.indices)
    one = start(tmp_path, clf, job, "one")
    run_eval(clf, job, one)
    sharded = start(tmp_path, clf, job, "sharded")
    for rank in range(3):
        run_eval(clf, job, sharded, Shard(rank, 3))
    assert len(sharded.record_files()) == 3
    assert comparable(sharded.records()) == comparable(one.records())


def test_a_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "records-rank00000.jsonl"
    path.write_text('{"index": 0, "status": "ok"}\n{"index": 1, "sta')
    assert [r["index"] for r in read_records(path)] == [0]
    with RecordWriter(path) as w:
        w.append({"index": 1, "status": "ok"})
    assert [r["index"] for r in read_records(path)] == [0, 1]
    assert path.read_text().count("\n") == 2


def test_another_configuration_is_refused(tmp_path):
    clf, dataset, _ = gaussian_setup()
    store = start(tmp_path, clf, make_job(clf, dataset))
    store.claim(make_config("gauss", make_job(clf, dataset)))  # the same: fine
    for other in (make_job(clf, dataset, seed=1), make_job(clf, dataset, schedule=Full((100, 400)))):
        with pytest.raises(UserInputError, match="another configuration"):
            store.claim(make_config("gauss", other))
    saved = json.loads(store.config_path.read_text())
    assert saved["schedule"] == {"kind": "Full", "timesteps": [100, 400, 700]}
    assert "torch" in saved["versions"]


def test_a_bad_image_is_recorded_as_failed_and_the_run_goes_on(tmp_path):
    clf, dataset, xs = gaussian_setup(n_images=4)

    def load(i):
        if i == 2:
            raise OSError("truncated file")
        return xs[i]

    broken = EvalDataset.from_names("gauss", "test", dataset.labels, load, dataset.class_names)
    job = make_job(clf, broken)
    store = start(tmp_path, clf, job)
    run_eval(clf, job, store)
    records = store.records()
    assert [records[i]["status"] for i in range(4)] == ["ok", "ok", "failed", "ok"]
    assert "truncated file" in records[2]["error"]


def test_labels_outside_the_candidates_are_refused():
    clf, dataset, xs = gaussian_setup(n_images=2)
    odd = EvalDataset.from_names("gauss", "test", ["0", "seven"], lambda i: xs[i])
    with pytest.raises(UserInputError, match="seven"):
        eval_candidates(clf, odd, (0, 1))


def test_selection_limit_and_subset(tmp_path):
    ten, two = gaussian_setup(n_images=10)[1], gaussian_setup(n_images=2)[1]
    three = select_indices(ten, limit=3, seed=0)
    assert len(set(three)) == 3 and select_indices(ten, limit=7, seed=0)[:3] == three  # a prefix of one shuffle
    assert sorted(select_indices(two, limit=5)) == [0, 1]
    (tmp_path / "s.txt").write_text("4, 2\n7\n")
    assert select_indices(ten, subset=read_subset_file(tmp_path / "s.txt")) == (4, 2, 7)
    with pytest.raises(UserInputError):
        select_indices(two, subset=(1, 9))
    with pytest.raises(UserInputError):
        select_indices(ten, limit=0)


def _digit(value: int) -> Image.Image:
    return Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8))


def test_hf_dataset_from_a_local_save_to_disk_copy(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"picture": [_digit(10 * i) for i in range(6)], "y": [2, 0, 1, 2, 0, 1]},
        features=datasets.Features({"picture": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b", "c"])}),
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "copy"))
    data = open_dataset(str(tmp_path / "copy"), split="test")
    assert data.labels == ["c", "a", "b", "c", "a", "b"]
    assert data.class_names == ["a", "b", "c"]
    img = data.image(3)
    assert img.size == (8, 8) and np.asarray(img)[0, 0, 0] == 30
    with pytest.raises(UserInputError, match="split"):
        open_dataset(str(tmp_path / "copy"), split="train")


def test_a_named_dataset_maps_label_ids_to_the_published_classnames(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"img": [_digit(0), _digit(1)], "label": [0, 9]})
    ds.save_to_disk(str(tmp_path / "cifar"))
    data = open_dataset("cifar10", data_dir=str(tmp_path / "cifar"))
    assert data.labels == ["airplane", "truck"]
    assert data.prompts is not None and data.prompts.name == "cifar10_prompts.csv"


def test_folder_dataset_labels_are_folder_names_and_bad_files_fail_alone(tmp_path):
    for label, n in (("3", 2), ("8", 1)):
        (tmp_path / label).mkdir()
        for k in range(n):
            _digit(k).save(tmp_path / label / f"{k}.png")
    (tmp_path / "8" / "broken.png").write_bytes(b"not a png")
    data = open_dataset(f"folder:{tmp_path}")
    assert data.labels == ["3", "3", "8", "8"]
    with pytest.raises(Exception):  # noqa: B017 - whatever PIL raises; the runner records it as failed
        data.image(3)
    assert data.image(0).mode == "RGB"


def test_class_model_takes_dataset_names_it_resolves_itself():
    clf, dataset, xs = gaussian_setup(n_images=2)

    class Aliased(GaussianClassModel):  # knows "zero" and "one" as other names of classes 0 and 1
        def condition(self, conditions):
            alias = {"zero": "0", "one": "1"}
            return super().condition([alias.get(c, c) for c in conditions])

    aliased = DiffusionClassifier(Aliased(clf.model.means, clf.model.std))
    named = EvalDataset.from_names("gauss", "test", ["zero", "one"], lambda i: xs[i])
    assert eval_candidates(aliased, named, (0, 1)).labels == ("zero", "one")
    with pytest.raises(UserInputError, match="seven"):  # a name the model cannot resolve
        eval_candidates(aliased, EvalDataset.from_names("gauss", "test", ["zero", "seven"], lambda i: xs[i]), (0, 1))


def test_hub_datasets_fail_clearly_offline_and_without_a_public_copy(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match="cannot load dataset 'uoft-cs/cifar10'"):
        open_dataset("cifar10")
    with pytest.raises(UserInputError, match="--data-dir"):
        open_dataset("objectnet")

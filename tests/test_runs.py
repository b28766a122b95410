"""Evaluation runs in process (Gaussian model): the crash-safe store, resume, configuration checks, datasets."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from builders import comparable, gaussian_dataset
from diffusion_classifier import DiffusionClassifier, Full
from diffusion_classifier.data.datasets import EvalDataset, open_dataset, read_subset_file, select_indices
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.models.gaussian import GaussianClassModel
from diffusion_classifier.runs.engine import (
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


def make_job(clf, dataset, indices=None, **kw) -> EvalJob:
    indices = tuple(range(len(dataset))) if indices is None else indices
    kw.setdefault("schedule", SCHEDULE)
    kw.setdefault("loss", "l2")
    return EvalJob(dataset, indices, eval_candidates(clf, dataset, indices), **kw)


def start(tmp_path, clf, job, name="run") -> RunStore:
    store = RunStore(tmp_path / name)
    store.claim(make_config("gauss", job))
    return store


def test_records_match_the_classify_api(tmp_path):
    clf, dataset, xs = gaussian_dataset(12)
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
    clf, dataset, _ = gaussian_dataset(12)
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
    clf, dataset, _ = gaussian_dataset(11)
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
    clf, dataset, _ = gaussian_dataset(12)
    store = start(tmp_path, clf, make_job(clf, dataset))
    store.claim(make_config("gauss", make_job(clf, dataset)))  # the same: fine
    for other in (make_job(clf, dataset, seed=1), make_job(clf, dataset, schedule=Full((100, 400)))):
        with pytest.raises(UserInputError, match="another configuration"):
            store.claim(make_config("gauss", other))
    saved = json.loads(store.config_path.read_text())
    assert saved["schedule"] == {"kind": "Full", "timesteps": [100, 400, 700]}
    assert "torch" in saved["versions"]


def test_a_bad_image_is_recorded_as_failed_and_the_run_goes_on(tmp_path):
    clf, dataset, xs = gaussian_dataset(4)

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
    clf, dataset, xs = gaussian_dataset(2)
    odd = EvalDataset.from_names("gauss", "test", ["0", "seven"], lambda i: xs[i])
    with pytest.raises(UserInputError, match="seven"):
        eval_candidates(clf, odd, (0, 1))


def test_selection_limit_and_subset(tmp_path):
    ten, two = gaussian_dataset(10)[1], gaussian_dataset(2)[1]
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
    # recorded by resolved path and datasets' fingerprint; opening it again gives the same identity
    assert data.identity["kind"] == "disk" and data.identity["source"] == str((tmp_path / "copy").resolve())
    assert data.identity["fingerprint"] and open_dataset(str(tmp_path / "copy"), split="test").identity == data.identity
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
    clf, dataset, xs = gaussian_dataset(2)

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


# --- run directories never duplicate, mix or lose work (issue #12) ------------------------------------

EVAL = ["--model", "builtin:mnist", "--timesteps", "500", "--device", "cpu"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI run in this process."""
    from diffusion_classifier.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: the checks under test must answer before one."""
    from diffusion_classifier.pipeline import DiffusionClassifier

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(DiffusionClassifier, "from_pretrained", refuse)


def digits(root, sizes=None):
    """A folder dataset: classes 3 and 8, two 28 x 28 digits each (shade k), the same names in every copy."""
    for label in ("3", "8"):
        (root / label).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((28, 28), 60 * k + (sizes or 0), dtype=np.uint8)).save(root / label / f"{k}.png")
    return root


def record_lines(out) -> list[dict]:
    return [r for p in RunStore(out).record_files() for r in read_records(p)]


def test_a_second_process_on_the_same_out_is_refused_and_a_stale_lock_is_taken_over(
    tmp_path, capsys, caplog, no_model_loads
):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from diffusion_classifier.runs.engine import RunStore\n"
         "with RunStore(sys.argv[1]).lock():\n    print('locked', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli(capsys, "eval", "--dataset", "builtin:mnist", "--out", out, "--limit", 2, *EVAL)
        assert code == 2 and f"pid {holder.pid}" in err and "in use" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()  # SIGKILL: no clean release, the lock file still names it
        holder.wait()
    assert f'"pid": {holder.pid}' in (out / "lock-rank00000").read_text()
    with caplog.at_level("WARNING"), RunStore(out).lock() as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"stale lock {out / 'lock-rank00000'} of pid {holder.pid}" in caplog.text
    assert (out / "lock-rank00000").read_text() == ""  # released cleanly: nobody to take over next time


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "o_excl"])
def test_locks_per_rank(tmp_path, monkeypatch, caplog, flock):
    from diffusion_classifier.runs import engine as runs

    if not flock:
        monkeypatch.setattr(runs, "fcntl", None)
    store = RunStore(tmp_path / "run")
    with store.lock(Shard(0, 2)), store.lock(Shard(1, 2)):  # the ranks of one sharded run: each its own lock
        with pytest.raises(UserInputError, match=f"pid {os.getpid()}"):
            store.lock(Shard(1, 2)).__enter__()  # the same rank twice
        with pytest.raises(UserInputError, match="in use"):
            store.lock(Shard(2, 3)).__enter__()  # a run of another size would redo their images
    with store.lock(Shard(0, 1)):  # all released
        pass
    if not flock:  # a lock file left by a process that is gone from this host is taken over
        dead = exited_pid()
        (store.dir / "lock-rank00000").write_text(json.dumps({"pid": dead, "host": os.uname().nodename}))
        with caplog.at_level("WARNING"), store.lock():
            pass
        assert f"of pid {dead}" in caplog.text


def exited_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_folder_dataset_is_identified_by_its_absolute_path_and_files(tmp_path, capsys, monkeypatch):
    digits(tmp_path / "a" / "digits")
    digits(tmp_path / "b" / "digits", sizes=1)  # the same names elsewhere, other content
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    assert cli(capsys, "eval", "--dataset", "folder:digits", "--out", out, *EVAL)[0] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dataset_id"]["path"] == str((tmp_path / "a" / "digits").resolve())
    assert config["dataset_id"]["images"] == 4 and len(config["file_sizes"]) == 4

    monkeypatch.chdir(tmp_path / "b")  # `folder:digits` now names another folder: refused, saying both
    code, _, err = cli(capsys, "eval", "--dataset", "folder:digits", "--out", out, *EVAL)
    assert code == 2 and str(tmp_path / "a" / "digits") in err and str(tmp_path / "b" / "digits") in err
    assert len(record_lines(out)) == 4

    monkeypatch.chdir(tmp_path)  # the same folder from another working directory: resumes
    code, stdout, _ = cli(capsys, "eval", "--dataset", "folder:a/digits", "--out", out, *EVAL)
    assert code == 0 and "4/4" in stdout and len(record_lines(out)) == 4

    (tmp_path / "a" / "digits" / "8" / "2.png").write_bytes((tmp_path / "a" / "digits" / "8" / "1.png").read_bytes())
    code, _, err = cli(capsys, "eval", "--dataset", "folder:a/digits", "--out", out, *EVAL)
    assert code == 2 and "another dataset" in err  # a file added: the indices would shift
    (tmp_path / "a" / "digits" / "8" / "2.png").unlink()
    Image.fromarray(np.full((28, 28), 7, dtype=np.uint8)).resize((30, 30)).save(
        tmp_path / "a" / "digits" / "3" / "0.png"
    )
    code, _, err = cli(capsys, "eval", "--dataset", "folder:a/digits", "--out", out, *EVAL)
    assert code == 2 and "changed since they were classified" in err  # a classified image replaced


def test_failed_images_are_retried_on_resume(tmp_path, capsys):
    root = digits(tmp_path / "digits")
    broken = root / "8" / "1.png"
    good = broken.read_bytes()
    broken.write_bytes(b"not a png")
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "eval", "--dataset", f"folder:{root}", "--out", out, *EVAL)
    assert code == 1 and "(1 failed)" in stdout and "1 image(s) failed" in err  # some failed, the rest done
    assert json.loads(cli(capsys, "report", out, "--json")[1])["failed"] == 1

    broken.write_bytes(good)  # the user fixes the file (its size changes: allowed, it has no ok record)
    code, stdout, _ = cli(capsys, "eval", "--dataset", f"folder:{root}", "--out", out, *EVAL)
    assert code == 0 and "| 4/4 |" in stdout
    report = json.loads(cli(capsys, "report", out, "--json")[1])
    assert (report["n"], report["failed"]) == (4, 0)
    ok = sorted(r["index"] for r in record_lines(out) if r["status"] == "ok")
    assert ok == [0, 1, 2, 3]  # one ok record per image: nothing classified twice


def test_every_image_failing_exits_2(tmp_path, capsys):
    root = digits(tmp_path / "digits")
    for path in root.rglob("*.png"):
        path.write_bytes(b"broken")
    code, stdout, _ = cli(capsys, "eval", "--dataset", f"folder:{root}", "--out", tmp_path / "run", *EVAL)
    assert code == 2 and "(4 failed)" in stdout


def test_unusable_out_paths_are_refused_before_any_model_loads(tmp_path, capsys, monkeypatch, no_model_loads):
    from diffusion_classifier.training import train as training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("training started"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    wino = tmp_path / "wino"
    (wino / "images").mkdir(parents=True)
    row = {"id": 0, "caption_0": "a b", "caption_1": "b a", "image_0": "x", "image_1": "y", "collapsed_tag": "Object"}
    (wino / "examples.jsonl").write_text(json.dumps(row) + "\n")
    for name in ("x", "y"):
        _digit(0).save(wino / "images" / f"{name}.png")
    report_run = tmp_path / "report-run"
    RunStore(report_run).claim(make_config("gauss", make_job(*gaussian_dataset(2)[:2])))
    bad = [a_file, a_file / "sub"]  # the path is a file; a parent is a file (both hold as root too)
    if os.geteuid() != 0:  # chmod does not bind root
        (tmp_path / "ro").mkdir(mode=0o500)
        bad.append(tmp_path / "ro" / "run")
    for out in bad:
        commands = [
            ["eval", "--dataset", "builtin:mnist", "--limit", 1, "--out", out, *EVAL],
            ["demo", "--limit", 1, "--out", out],
            ["winoground", "--data-dir", wino, "--model", "builtin:mnist", "--out", out],
            ["calibrate", "--model", "builtin:mnist", "--data", "folder:nowhere", "--out", out / "w.json"],
            ["report", report_run, "--out", out],
            ["train", "--out", out],
        ]  # fmt: skip
        for argv in commands:
            code, stdout, err = cli(capsys, *argv)
            assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, (argv, err)
    code, _, err = cli(capsys, "calibrate", "--model", "builtin:mnist", "--data", "folder:x", "--out", tmp_path)
    assert code == 2 and "is a folder" in err


@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", '{"model": 5}', '"text"'], ids=["not-json", "list", "types", "string"]
)
def test_a_damaged_run_config_is_one_line(tmp_path, capsys, content, no_model_loads):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(content)
    for argv in (["eval", "--dataset", "builtin:mnist", "--out", out, *EVAL], ["report", out]):
        code, stdout, err = cli(capsys, *argv)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and "config.json" in err


def test_wrong_field_types_in_a_run_config_are_named(tmp_path):
    clf, dataset, _ = gaussian_dataset(2)
    store = start(tmp_path, clf, make_job(clf, dataset))
    config = json.loads(store.config_path.read_text())
    for field_name, value in (("seed", "0"), ("images", None), ("candidates", []), ("selection", 3)):
        store.config_path.write_text(json.dumps({**config, field_name: value}))
        with pytest.raises(UserInputError, match=field_name):
            store.read_config()
    store.config_path.write_text(json.dumps({**config, "candidates": {"labels": ["0"]}}))
    with pytest.raises(UserInputError, match="candidates"):
        store.read_config()


@pytest.mark.parametrize("bad_file", ["classifier_config.json", "unet/config.json", "model_index.json"])
def test_a_model_folder_json_holding_a_list_is_one_line(tmp_path, capsys, bad_file):
    import shutil

    from diffusion_classifier.models import BUILTIN_DIR

    model = tmp_path / "model"
    shutil.copytree(BUILTIN_DIR / "mnist", model)
    (model / bad_file).write_text("[1, 2]")
    _digit(0).save(tmp_path / "x.png")
    code, _, err = cli(capsys, "classify", tmp_path / "x.png", "--model", model, "--labels", "0", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and bad_file.split("/")[-1] in err and "array" in err

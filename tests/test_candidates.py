"""Candidates are (prompt, class index) pairs: the published ImageNet table, topk ties, subsets, bad labels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from builders import comparable
from diffusion_classifier.cli import main
from diffusion_classifier.core.estimator import ErrorLedger
from diffusion_classifier.core.schedules import Full, Staged
from diffusion_classifier.data.datasets import (
    EvalDataset,
    open_dataset,
    per_class_subset,
    read_subset_file,
    select_indices,
)
from diffusion_classifier.data.prompts import (
    Candidates,
    from_template,
    published_prompts,
    read_prompts_csv,
)
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.pipeline import summarize
from diffusion_classifier.reporting.report import summarize_run
from diffusion_classifier.runs.engine import RunStore


def run_cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- the published ImageNet table ------------------------------------------------------------------


def test_imagenet_table_keeps_both_missile_and_both_sunglasses_classes():
    cands = read_prompts_csv(published_prompts("imagenet"))
    assert len(cands) == 1000 and cands.classes == list(range(1000))
    missiles = [k for k, name in zip(cands.class_ids, cands.labels) if name == "missile"]
    assert missiles == [657, 744]
    assert cands.conditions[657] == cands.conditions[744] == "a photo of a missile."
    assert [k for k, c in zip(cands.class_ids, cands.conditions) if c == "a photo of a sunglasses."] == [836, 837]
    keys = cands.keys()
    assert len(set(keys)) == 1000 and keys[657] == "657:missile" and keys[0] == "0:tench"


def test_classify_with_the_imagenet_table(tiny_sd_path, image_files, capsys):
    table = published_prompts("imagenet")
    code, out, err = run_cli(capsys, "classify", image_files[0], "--model", tiny_sd_path, "--prompts-file", table,
                             "--timesteps", "500", "--batch-size", "250", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["calls"] == 1000 and len(result["scores"]) == 1000 and len(result["errors"]) == 1000
    assert {s["class_index"] for s in result["scores"]} == set(range(1000))
    best = result["scores"][0]
    assert (result["prediction"], result["prediction_index"]) == (best["label"], best["class_index"])
    missile = {s["class_index"]: s["score"] for s in result["scores"] if s["label"] == "missile"}
    assert set(missile) == {657, 744}  # one prompt, two classes: both stay
    assert missile[657] == pytest.approx(missile[744], rel=1e-6)


# --- ties break as torch.topk breaks them ---------------------------------------------------------


def fixed_ledger(values: list[float]) -> ErrorLedger:
    """A ledger whose candidate c always errs values[c] (so equal values tie exactly)."""
    return ErrorLedger(lambda pairs: torch.tensor([values[p.candidate] for p in pairs]), len(values))


def test_exact_ties_fall_as_torch_topk_on_the_official_scores():
    errors = [-5.0, -1.0, -5.0, -5.0, -3.0]  # candidates 0, 2 and 3 tie for the lowest error
    official = torch.topk(torch.tensor([-torch.tensor([e]).mean() for e in errors]), k=1).indices.tolist()
    ledger = fixed_ledger(errors)
    Full((100, 500)).run(ledger, 1000)
    assert ledger.ranking()[0] == official[0]
    # a prompts CSV may give one prompt to two classes: the winner's class is the one topk picked
    cands = Candidates(("a", "b", "a", "c", "d"), ("p", "q", "p", "r", "s"), (10, 11, 12, 13, 14))
    result = summarize(ledger, cands, None, 0.0)
    assert result.prediction_index == cands.class_ids[official[0]]
    assert [s["class_index"] for s in result.scores][:1] == [cands.class_ids[official[0]]]
    assert sorted(s["class_index"] for s in result.scores) == [10, 11, 12, 13, 14]  # every class ranked


def test_staged_survivors_are_torch_topk_of_each_stage():
    errors = [2.0, 1.0, 1.0, 1.0, 3.0, 1.0]
    ledger = fixed_ledger(errors)
    Staged((2, 4), (3, 1)).run(ledger, 1000)
    scores = torch.tensor([-torch.tensor([e, e]).mean() for e in errors])
    stage1 = torch.topk(scores, k=3).indices.tolist()
    final = stage1[torch.topk(scores[stage1], k=1).indices.item()]
    assert sorted(c for c in range(6) if len(ledger.errors[c]) == 4) == sorted(stage1)
    assert ledger.ranking()[0] == final


def test_duplicate_prompts_on_two_classes_are_both_ranked(tiny_sd_path, image_files, tmp_path, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,classname,classidx\na photo of a missile.,missile,5\na photo of a cat.,cat,2\n"
                   "a photo of a missile.,missile,9\n")  # fmt: skip
    code, out, err = run_cli(capsys, "classify", image_files[1], "--model", tiny_sd_path, "--prompts-file", csv,
                             "--timesteps", "100,500,900", "--batch-size", "64", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert sorted(s["class_index"] for s in result["scores"]) == [2, 5, 9]
    assert set(result["errors"]) == {"5:missile", "2:cat", "9:missile"}  # names repeat: every key gets its index
    scores = torch.tensor([-torch.tensor(result["errors"][k]["values"]).mean() for k in result["errors"]])
    winner = torch.topk(scores, k=1).indices.item()
    assert result["prediction_index"] == [5, 2, 9][winner]


# --- subsets ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return open_dataset("builtin:mnist")


def test_per_class_subset_is_stratified_seeded_and_grows_as_a_prefix(digits):
    three = select_indices(digits, per_class=3, seed=0)
    labels = [digits.label_ids[i] for i in three]
    assert len(three) == 30 and np.bincount(labels, minlength=10).tolist() == [3] * 10
    assert select_indices(digits, per_class=3, seed=0) == three
    assert select_indices(digits, per_class=3, seed=1) != three
    assert select_indices(digits, per_class=5, seed=0)[:30] == three  # round by round: a larger N extends


def test_per_class_takes_what_a_small_class_has_and_says_so_once(caplog):
    picks = per_class_subset([0, 0, 0, 1, 2, 2], 3, 2, seed=0)
    assert sorted(picks).count(3) == 1 and len(picks) == 5
    assert len([r for r in caplog.records if "fewer images than --per-class 2" in r.message]) == 1


def test_limit_is_a_prefix_of_a_seeded_shuffle(digits):
    twenty = select_indices(digits, limit=20, seed=0)
    assert len({digits.label_ids[i] for i in twenty}) >= 2  # not twenty zeros of a class-sorted split
    assert select_indices(digits, limit=50, seed=0)[:20] == twenty
    assert select_indices(digits, limit=20, seed=7) != twenty
    code = "from diffusion_classifier.data.datasets import *; "
    code += "print(list(select_indices(open_dataset('builtin:mnist'), 20)))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(other) == list(twenty)  # the same in another process


def test_eval_per_class_saves_subset_npy_and_subset_reruns_it(tiny_pipeline, tmp_path, capsys):
    model = tiny_pipeline("digits")
    common = ["eval", "--dataset", "builtin:mnist", "--model", model, "--timesteps", "500", "--device", "cpu"]
    code, _, err = run_cli(capsys, *common, "--per-class", "1", "--subset-seed", "3", "--out", tmp_path / "a")
    assert code == 0, err
    saved = np.load(tmp_path / "a" / "subset.npy")
    assert saved.dtype == np.int64 and saved.ndim == 1 and len(saved) == 10
    records = RunStore(tmp_path / "a").records()
    assert sorted(records) == sorted(saved.tolist())
    assert {r["label_index"] for r in records.values()} == set(range(10))
    config = RunStore(tmp_path / "a").require_config()
    assert (config.per_class, config.subset_seed) == (1, 3)
    code, _, err = run_cli(capsys, *common, "--subset", tmp_path / "a" / "subset.npy", "--out", tmp_path / "b")
    assert code == 0, err
    assert comparable(RunStore(tmp_path / "b").records()) == comparable(records)


def test_subset_npy_is_never_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match="numeric .npy"):
        read_subset_file(tmp_path / "obj.npy")
    np.save(tmp_path / "f.npy", np.array([1.5, 2.0]))
    with pytest.raises(UserInputError, match="integer array"):
        read_subset_file(tmp_path / "f.npy")
    np.save(tmp_path / "ok.npy", np.array([4, 2], dtype=np.int32))
    assert read_subset_file(tmp_path / "ok.npy") == (4, 2)


# --- datasets and records keyed by class index -------------------------------------------------------


def test_a_dataset_with_two_classes_of_one_name_scores_by_index(tiny_sd_path, tmp_path, capsys):
    """A folder dataset named like the published table: records carry indices; report counts by index."""
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,classname,classidx\na photo of a missile.,missile,0\na photo of a missile.,missile,1\n")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b")):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / name / f"{k}.png")
    data = open_dataset(f"folder:{tmp_path / 'data'}")
    twin = EvalDataset("twins", "test", data.label_ids, ["missile", "missile"], data.image)
    from diffusion_classifier.pipeline import DiffusionClassifier
    from diffusion_classifier.runs.engine import eval_candidates

    clf = DiffusionClassifier.from_pretrained(tiny_sd_path)
    cands = eval_candidates(clf, twin, (0, 1), prompts=read_prompts_csv(csv))
    assert cands.class_ids == (0, 1)
    with pytest.raises(UserInputError, match="class names repeat"):
        eval_candidates(clf, twin, (0, 1), labels=["missile", "rocket"])


def test_old_records_without_indices_still_report(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    config = {"model": "m", "dataset": "d", "split": "test", "schedule": {"kind": "Full", "timesteps": [500]},
              "loss": "l2", "seed": 0, "images": 2,
              "candidates": {"labels": ["a", "b"], "conditions": ["a", "b"]}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    lines = [{"index": 0, "label": "a", "status": "ok", "prediction": "a", "mean_errors": {"a": 1.0, "b": 2.0},
              "calls": 2, "seconds": 0.1, "rank": 0},
             {"index": 1, "label": "b", "status": "ok", "prediction": "a", "mean_errors": {"a": 1.0, "b": 2.0},
              "calls": 2, "seconds": 0.1, "rank": 0}]  # fmt: skip
    (run / "records-rank00000.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = summarize_run(RunStore(run))
    assert (summary.n, summary.top1) == (2, 0.5)
    assert RunStore(run).require_config().candidates["class_ids"] == [0, 1]


# --- bad labels, templates and files: one line, exit 2 -------------------------------------------------


def one_line_exit_2(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def digit_model(tiny_pipeline):
    return tiny_pipeline("digits")


@pytest.fixture
def gray_image(tmp_path):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "x.png")
    return tmp_path / "x.png"


@pytest.mark.parametrize(
    "labels,needle",
    [(["7", "07"], "name the same class"), (["³", "1"], "unknown class '³'"), (["1", "x" * 300], "x" * 40 + "…")],
)
def test_class_model_labels_that_are_not_plain(digit_model, gray_image, capsys, labels, needle):
    code, _, err = run_cli(capsys, "classify", gray_image, "--model", digit_model, "--labels", *labels,
                           "--timesteps", "500")  # fmt: skip
    one_line_exit_2(code, err, needle)
    assert "x" * 41 not in err  # a long label is shortened


@pytest.mark.parametrize("template", ["a {0}.", "a {name}.", "{} and {}", "a { photo {}", "a } {}", "a {:>9}"])
def test_templates_need_exactly_one_plain_field(tiny_sd_path, image_files, capsys, template):
    code, _, err = run_cli(capsys, "classify", image_files[0], "--model", tiny_sd_path, "--labels", "a", "b",
                           "--template", template, "--timesteps", "500")  # fmt: skip
    one_line_exit_2(code, err, "template", 'exactly one "{}"')


def test_escaped_braces_are_literal():
    assert from_template(["cat"], "{{a}} {}").conditions == ("{a} cat",)


PROMPT_FILES = [
    (b"prompt,classname,classidx\n\xff\xfe,cat,0\n", "not UTF-8 text (line 2)"),
    (b"prompt,classname,classidx\na cat.,,0\n", "line 2: empty classname"),
    (b"prompt,classname,classidx\na cat.,cat,0\na dog.,dog\n", "line 3: 2 fields"),
    (b"prompt,classname,classidx\na cat.,cat,zero\n", "line 2: classidx 'zero'"),
    (b"prompt,classname,classidx\n", "has no rows"),
    (b"prompt,classname,classidx\na cat.,cat,0\na cat.,cat,0\n", "line 3: the prompt of line 2 again"),
    (b"text,label\na,b\n", "needs a header"),
]


@pytest.mark.parametrize("content,needle", PROMPT_FILES)
def test_bad_prompt_files(tiny_sd_path, image_files, tmp_path, capsys, content, needle):
    (tmp_path / "p.csv").write_bytes(content)
    code, _, err = run_cli(capsys, "classify", image_files[0], "--model", tiny_sd_path, "--prompts-file",
                           tmp_path / "p.csv", "--timesteps", "500")  # fmt: skip
    one_line_exit_2(code, err, needle, str(tmp_path / "p.csv"))


@pytest.mark.parametrize("content,needle", [(b"cat\n\xe9t\xe9\n", "not UTF-8 text (line 2)"), (b"\n  \n", "no labels")])
def test_bad_labels_files(tiny_sd_path, image_files, tmp_path, capsys, content, needle):
    (tmp_path / "l.txt").write_bytes(content)
    code, _, err = run_cli(capsys, "classify", image_files[0], "--model", tiny_sd_path, "--labels-file",
                           tmp_path / "l.txt", "--timesteps", "500")  # fmt: skip
    one_line_exit_2(code, err, needle, str(tmp_path / "l.txt"))


def test_eval_imagenet_per_class_on_a_local_copy(tiny_sd_path, tmp_path, capsys, caplog):
    """`eval --dataset imagenet --per-class N` with the published table: records carry class indices."""
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(4)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [744, 657, 744, 3]})
    ds.save_to_disk(str(tmp_path / "imagenet"))
    code, _, err = run_cli(capsys, "eval", "--dataset", "imagenet", "--data-dir", tmp_path / "imagenet", "--model",
                           tiny_sd_path, "--per-class", "1", "--timesteps", "500", "--batch-size", "250",
                           "--device", "cpu", "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    assert [r.message for r in caplog.records if "fewer images" in r.message] == [
        "997 of 1000 classes have fewer images than --per-class 1: all of theirs are taken"
    ]  # said once
    records = RunStore(tmp_path / "run").records()
    assert sorted((r["label_index"], r["label"]) for r in records.values()) == [
        (3, "tiger shark"), (657, "missile"), (744, "missile")
    ]  # fmt: skip
    assert sorted(records) == sorted(np.load(tmp_path / "run" / "subset.npy").tolist())
    for r in records.values():
        assert r["calls"] == 1000 and len(r["ranking"]) == 1000
        assert r["prediction_index"] == r["ranking"][0]["class_index"]
    summary = summarize_run(RunStore(tmp_path / "run"))
    assert summary.top1 == sum(r["prediction_index"] == r["label_index"] for r in records.values()) / 3

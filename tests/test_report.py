"""`eval` then `report` on a folder of held-out digits equals `classify`, image for image; metrics and figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffusion_classifier.cli import main
from diffusion_classifier.reporting.metrics import confusion_matrix, mean_per_class_accuracy, wilson_interval
from diffusion_classifier.reporting.report import prefix_accuracy_curve
from diffusion_classifier.runs.engine import RunStore

TIMESTEPS = "100,500,900"


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """Six held-out MNIST digits (classes 3 and 8) as PNGs in one folder per class; paths in dataset order."""
    from diffusion_classifier.data.mnist import test_split

    split = test_split()
    root = tmp_path_factory.mktemp("digits")
    paths = []
    for digit in (3, 8):
        (root / str(digit)).mkdir()
        for k, row in enumerate(np.flatnonzero(split.labels == digit)[:3]):
            path = root / str(digit) / f"{k}.png"
            Image.fromarray(split.images[row]).save(path)
            paths.append(path)
    return root, paths


def run_cli(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def test_eval_then_report_equals_classify(tiny_sd_path, digit_folder, tmp_path, capsys):
    root, paths = digit_folder
    model = ["--model", tiny_sd_path, "--timesteps", TIMESTEPS, "--seed", "5", "--device", "cpu"]
    run_dir = tmp_path / "run"
    table = run_cli(capsys, "eval", "--dataset", f"folder:{root}", "--out", run_dir, "--save-errors", *model)
    assert "| top-1 %" in table and "6/6" in table

    report = json.loads(run_cli(capsys, "report", run_dir, "--json"))
    classify = [
        json.loads(line)
        for line in run_cli(capsys, "classify", *paths, "--labels", "3", "8", "--json", *model).splitlines()
    ]
    assert [img["index"] for img in report["images"]] == list(range(6))
    assert [img["label"] for img in report["images"]] == ["3"] * 3 + ["8"] * 3
    assert [img["prediction"] for img in report["images"]] == [c["prediction"] for c in classify]
    assert [img["calls"] for img in report["images"]] == [c["calls"] for c in classify] == [6] * 6
    right = sum(img["prediction"] == img["label"] for img in report["images"])
    assert report["accuracy"] == right / 6 and report["n"] == 6
    records = RunStore(run_dir).records()
    for i, c in enumerate(classify):  # not only the decision: the very same errors
        assert [(r["class_index"], r["mean_error"]) for r in records[i]["ranking"]] == [
            (s["class_index"], -s["score"]) for s in c["scores"]
        ]
        assert records[i]["prediction_index"] == c["prediction_index"] == records[i]["ranking"][0]["class_index"]

    # a rerun resumes a finished run: nothing new is written
    before = [p.read_bytes() for p in RunStore(run_dir).record_files()]
    run_cli(capsys, "eval", "--dataset", f"folder:{root}", "--out", run_dir, "--save-errors", *model)
    assert [p.read_bytes() for p in RunStore(run_dir).record_files()] == before

    out = run_cli(capsys, "report", run_dir)
    assert "top-1 % [95% Wilson]" in out and f"| 6/6 | {100 * right / 6:.1f} [" in out  # the table's accuracy
    for name in ("confusion.png", "accuracy_vs_calls.png", "error_vs_timestep.png"):
        with Image.open(run_dir / name) as img:
            assert img.size[0] > 100
    curve = prefix_accuracy_curve(RunStore(run_dir))
    assert [c for c, _ in curve] == [2, 4, 6] and curve[-1][1] == report["accuracy"]


def test_a_different_configuration_is_refused_by_the_cli(tiny_sd_path, digit_folder, tmp_path, capsys):
    root, _ = digit_folder
    base = ["eval", "--dataset", f"folder:{root}", "--out", tmp_path / "run", "--model", tiny_sd_path,
            "--device", "cpu", "--limit", "1"]  # fmt: skip
    run_cli(capsys, *base, "--timesteps", "500")
    assert main([str(a) for a in base] + ["--timesteps", "400"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_report_of_an_unfinished_run_and_of_several_runs(tiny_sd_path, digit_folder, tmp_path, capsys):
    root, _ = digit_folder
    common = ["--dataset", f"folder:{root}", "--model", tiny_sd_path, "--device", "cpu", "--timesteps", "500"]
    run_cli(capsys, "eval", "--out", tmp_path / "a", "--limit", "2", *common)
    store = RunStore(tmp_path / "a")
    config = json.loads(store.config_path.read_text())
    config["images"] = 6  # pretend the run covers all six and was interrupted after two
    store.config_path.write_text(json.dumps(config))
    run_cli(capsys, "eval", "--out", tmp_path / "b", "--limit", "3", *common)
    lines = run_cli(capsys, "report", tmp_path / "a", tmp_path / "b", "--json").splitlines()
    a, b = (json.loads(x) for x in lines)
    assert (a["n"], a["expected"], len(a["images"])) == (2, 6, 2)
    assert (b["n"], b["expected"]) == (3, 3)
    table = run_cli(capsys, "report", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "figs")
    assert "2/6" in table and "3/3" in table
    assert (tmp_path / "figs" / "accuracy_vs_calls.png").is_file()
    assert (tmp_path / "figs" / "a" / "confusion.png").is_file()


def test_report_out_keeps_the_figures_of_runs_with_the_same_name_apart(tiny_sd_path, digit_folder, tmp_path, capsys):
    root, _ = digit_folder
    common = ["--dataset", f"folder:{root}", "--model", tiny_sd_path, "--device", "cpu", "--timesteps", "500"]
    runs = [tmp_path / "x" / "run", tmp_path / "y" / "run"]
    for run_dir, limit in zip(runs, ("2", "3")):
        run_cli(capsys, "eval", "--out", run_dir, "--limit", limit, *common)
    out = run_cli(capsys, "report", *runs, "--out", tmp_path / "figs")
    figs = {p.relative_to(tmp_path / "figs").as_posix() for p in (tmp_path / "figs").rglob("*.png")}
    assert {"x-run/confusion.png", "y-run/confusion.png", "accuracy_vs_calls.png"} <= figs
    assert out.count("wrote ") == len(figs)
    one = run_cli(capsys, "report", runs[0], runs[0], "--out", tmp_path / "twice")  # the same run twice
    assert "twice/run-2/confusion.png" in one and (tmp_path / "twice" / "run" / "confusion.png").is_file()


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and 0.1 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mean_per_class_accuracy_and_confusion():
    labels = ["a", "a", "a", "a", "b", "b"]
    preds = ["a", "a", "a", "b", "b", "a"]
    mean, lo, hi = mean_per_class_accuracy(labels, preds)
    assert mean == pytest.approx((0.75 + 0.5) / 2)
    assert lo < mean < hi
    q = np.array([4 / 6, 2 / 4])  # (k + 1) / (n + 2): class a 3 of 4 right, class b 1 of 2
    se = np.sqrt((q * (1 - q) / np.array([6, 4])).sum()) / 2
    assert (lo, hi) == pytest.approx((mean - 1.959964 * se, mean + 1.959964 * se))
    _, lo, hi = mean_per_class_accuracy(["a", "b"], ["a", "a"])  # classes at 100 % and 0 %: still uncertain
    assert hi - lo > 0.3
    counts = confusion_matrix(labels, preds, ["a", "b"])
    assert counts.tolist() == [[3, 1], [1, 1]]

"""`diffusion-classifier demo`: the MNIST report through the eval runner (a tiny class-conditional UNet stands in)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from diffusion_classifier.cli import main
from diffusion_classifier.core.schedules import count_calls
from diffusion_classifier.data.datasets import open_dataset, select_indices
from diffusion_classifier.runs import demo
from diffusion_classifier.runs.engine import RunStore
from tiny_models import DIGITS_TIMESTEPS as TIMESTEPS


@pytest.fixture(scope="module")
def tiny_mnist_model(tiny_pipeline):
    """A class-conditional UNet2DModel folder (8 px, 1 channel, classes '0'..'9') with a default schedule."""
    return tiny_pipeline("digits")


@pytest.fixture
def tiny_demo(tiny_mnist_model, monkeypatch):
    monkeypatch.setattr(demo, "MODEL", str(tiny_mnist_model))
    monkeypatch.setattr(demo, "baseline", lambda out, indices: 0.5)  # the real one trains a CNN: tested below


def run_demo_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["demo", *map(str, argv), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one final JSON object, nothing else on stdout
    return json.loads(out[0])


def test_demo_reports_and_resumes(tiny_demo, tmp_path, capsys):
    out = tmp_path / "report"
    result = run_demo_json(capsys, "--limit", 4, "--out", out)
    assert set(result) == {"n", "accuracy", "calls_per_image", "seconds_per_image", "baseline_accuracy"}
    assert result["n"] == 4 and result["calls_per_image"] == 10 * len(TIMESTEPS)
    assert result["baseline_accuracy"] == 0.5 and result["seconds_per_image"] > 0

    saved = json.loads((out / "results.json").read_text())
    images = saved["images"]
    digits = open_dataset("builtin:mnist")
    picked = select_indices(digits, limit=4, seed=0)  # the first 4 of the seeded shuffle, not 4 zeros
    assert [img["index"] for img in images] == sorted(picked)
    assert [img["label"] for img in images] == [digits.labels[i] for i in sorted(picked)]
    assert len({img["label"] for img in images}) > 1  # the held-out split is ordered by class: shuffled, not
    assert result["accuracy"] == sum(img["prediction"] == img["label"] for img in images) / 4
    for name in ("confusion.png", "error_vs_timestep.png", "accuracy_vs_calls.png"):
        with Image.open(out / name) as img:
            assert img.size[0] > 100
    record = RunStore(out).records()[picked[0]]
    assert sorted(record["errors"]) == [str(d) for d in range(10)]
    assert record["errors"]["0"]["t"] == TIMESTEPS

    before = [p.read_bytes() for p in RunStore(out).record_files()]
    assert run_demo_json(capsys, "--limit", 4, "--out", out)["accuracy"] == result["accuracy"]  # resumed
    assert [p.read_bytes() for p in RunStore(out).record_files()] == before

    assert main(["demo", "--limit", "5", "--out", str(out), "--seed", "1"]) == 2  # other settings: refused ...
    assert "--fresh" in capsys.readouterr().err
    assert run_demo_json(capsys, "--limit", 5, "--out", out, "--fresh", "--seed", 1)["n"] == 5  # ... unless --fresh


def lines(out) -> list[bytes]:
    return [line for p in RunStore(out).record_files() for line in p.read_bytes().splitlines()]


def test_demo_resumes_with_another_limit_and_scores_the_baseline_on_the_same_digits(
    tiny_mnist_model, monkeypatch, tmp_path, capsys
):
    from diffusion_classifier.training import baseline as baseline_module

    monkeypatch.setattr(demo, "MODEL", str(tiny_mnist_model))
    trained = []
    monkeypatch.setattr(baseline_module, "baseline_predictions", lambda seed=0: trained.append(seed) or [0] * 1000)
    out = tmp_path / "report"
    assert run_demo_json(capsys, "--limit", 3, "--out", out)["n"] == 3
    first = lines(out)
    grown = run_demo_json(capsys, "--out", out, "--limit", 6)  # no --fresh: resumes
    assert grown["n"] == 6 and len(lines(out)) == 6 and lines(out)[:3] == first  # 3 reused, 3 classified
    images = json.loads((out / "results.json").read_text())["images"]
    assert len(images) == 6
    # the baseline (here: always "0") is scored on exactly the six digits the diffusion classifier reports on
    assert grown["baseline_accuracy"] == sum(img["label"] == "0" for img in images) / 6
    assert trained == [0]  # its predictions are cached once per report folder
    shrunk = run_demo_json(capsys, "--out", out, "--limit", 2)
    assert shrunk["n"] == 2 and len(lines(out)) == 6  # a smaller selection: nothing classified, two reported
    saved = json.loads((out / "results.json").read_text())
    assert saved["expected"] == 2 and len(saved["images"]) == 2


def test_demo_table_output(tiny_demo, tmp_path, capsys):
    assert main(["demo", "--limit", "2", "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "accuracy" in captured.out and "model calls per image: 30" in captured.out
    assert "baseline" in captured.out
    assert captured.err == ""  # no progress bar: stderr is not a terminal here


@pytest.mark.slow  # the real baseline CNN trains (15 epochs, about 15 s of it)
def test_demo_with_the_bundled_model(tmp_path, capsys):
    result = run_demo_json(capsys, "--limit", 3, "--out", tmp_path / "r")
    store = RunStore(tmp_path / "r")
    calls = [r["calls"] for r in store.records().values()]
    race = store.require_config().classifier_config().schedule  # the bundled model's own: a race
    assert result["n"] == len(calls) == 3 and result["calls_per_image"] == pytest.approx(sum(calls) / 3)
    assert result["calls_per_image"] < count_calls(race, 10)  # the race dropped digits before its cap
    assert result["baseline_accuracy"] > 0.9  # the CNN trained on the same 4,000 digits


def test_the_baseline_is_trained_once_per_report_folder(tmp_path, monkeypatch):
    from diffusion_classifier.data.mnist import test_split
    from diffusion_classifier.training import baseline as baseline_module

    calls = []
    truth = test_split().labels.tolist()
    monkeypatch.setattr(baseline_module, "baseline_predictions", lambda seed=0: calls.append(seed) or truth)
    assert demo.baseline(tmp_path, [0, 5, 999]) == 1.0
    assert demo.baseline(tmp_path, [1, 2]) == 1.0
    assert calls == [0]
    cached = json.loads((tmp_path / "baseline.json").read_text())
    cached["config"]["epochs"] += 1  # the baseline's recipe changed: train again
    cached["predictions"][0] = (truth[0] + 1) % 10  # (and the cached value is not used)
    (tmp_path / "baseline.json").write_text(json.dumps(cached))
    assert demo.baseline(tmp_path, [0]) == 1.0 and calls == [0, 0]
    assert demo.baseline(tmp_path, []) is None

"""`diffusion-classifier demo`: the MNIST report through the eval runner (a tiny class-conditional UNet stands in)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import build_tiny_class_unet
from diffusion_classifier.cli import demo, main
from diffusion_classifier.runs import RunStore

TIMESTEPS = [100, 500, 900]


@pytest.fixture(scope="module")
def tiny_mnist_model(tmp_path_factory):
    """A class-conditional UNet2DModel folder (8 px, 1 channel, classes '0'..'9') with a default schedule."""
    path = tmp_path_factory.mktemp("tiny-mnist") / "model"
    build_tiny_class_unet(path, [str(d) for d in range(10)], default_schedule={"timesteps": TIMESTEPS})
    return path


@pytest.fixture
def tiny_demo(tiny_mnist_model, monkeypatch):
    monkeypatch.setattr(demo, "MODEL", str(tiny_mnist_model))
    monkeypatch.setattr(demo, "baseline", lambda out: 0.5)  # the real baseline trains a classifier: tested elsewhere


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
    assert [img["index"] for img in images] == [0, 1, 2, 3]
    assert [img["label"] for img in images] == ["0"] * 4  # the held-out split is ordered by class
    assert result["accuracy"] == sum(img["prediction"] == img["label"] for img in images) / 4
    for name in ("confusion.png", "error_vs_timestep.png", "accuracy_vs_calls.png"):
        with Image.open(out / name) as img:
            assert img.size[0] > 100
    record = RunStore(out).records()[0]
    assert sorted(record["errors"]) == [str(d) for d in range(10)]
    assert record["errors"]["0"]["t"] == TIMESTEPS

    before = [p.read_bytes() for p in RunStore(out).record_files()]
    assert run_demo_json(capsys, "--limit", 4, "--out", out)["accuracy"] == result["accuracy"]  # resumed
    assert [p.read_bytes() for p in RunStore(out).record_files()] == before

    assert main(["demo", "--limit", "5", "--out", str(out)]) == 2  # other settings: refused ...
    assert "--fresh" in capsys.readouterr().err
    assert run_demo_json(capsys, "--limit", 5, "--out", out, "--fresh")["n"] == 5  # ... unless --fresh


def test_demo_table_output(tiny_demo, tmp_path, capsys):
    assert main(["demo", "--limit", "2", "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "accuracy" in captured.out and "model calls per image: 30" in captured.out
    assert "baseline" in captured.out
    assert captured.err == ""  # no progress bar: stderr is not a terminal here


def test_demo_with_the_bundled_model(tmp_path, capsys):
    result = run_demo_json(capsys, "--limit", 3, "--out", tmp_path / "r")
    assert result["n"] == 3 and 0 < result["calls_per_image"] <= 5000
    assert result["baseline_accuracy"] > 0.9  # the CNN trained on the same 4,000 digits


def test_the_baseline_is_trained_once_per_report_folder(tmp_path, monkeypatch):
    from diffusion_classifier import baseline as baseline_module

    calls = []
    monkeypatch.setattr(baseline_module, "baseline_accuracy", lambda seed=0: calls.append(seed) or 0.97)
    assert demo.baseline(tmp_path) == 0.97
    assert demo.baseline(tmp_path) == 0.97
    assert calls == [0]
    cached = json.loads((tmp_path / "baseline.json").read_text())
    cached["config"]["epochs"] += 1  # the baseline's recipe changed: train again
    (tmp_path / "baseline.json").write_text(json.dumps(cached))
    assert demo.baseline(tmp_path) == 0.97 and calls == [0, 0]

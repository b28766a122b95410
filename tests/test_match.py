"""`match`: the images x captions score matrix equals the independent SPEC.md §4 implementation; its outputs."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier.cli import main
from diffusion_classifier.core.schedules import interval_grid
from diffusion_classifier.matching.scores import DiffusionMatcher, caption_scores
from diffusion_classifier.pipeline import DiffusionClassifier
from test_winoground import reference_scores

CAPTIONS = ["a red square", "a square, red", "two blue circles"]


@pytest.fixture(scope="module")
def noise_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("noise") / "noise.pt"
    torch.save(torch.randn(10, 4, 8, 8, generator=torch.Generator().manual_seed(3)), path)
    return path


def match_argv(sd_path, image_files, noise_file, *extra):
    argv = ["match", "--model", str(sd_path), "--images", *map(str, image_files[:2]), "--captions", *CAPTIONS]
    return argv + ["--t-interval", "100", "--noise-file", str(noise_file), "--device", "cpu", *extra]


def test_matrix_matches_an_independent_implementation(tiny_sd_path, image_files, noise_file, capsys):
    assert main(match_argv(tiny_sd_path, image_files, noise_file, "--json")) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["captions"] == CAPTIONS and got["images"] == [str(p) for p in image_files[:2]]
    noise = torch.load(noise_file, weights_only=True)
    want = reference_scores(tiny_sd_path, [Image.open(p) for p in image_files[:2]], CAPTIONS, noise, 100)
    assert np.allclose(got["scores"], want, rtol=1e-4, atol=0)


def test_csv_and_table_carry_the_same_numbers(tiny_sd_path, image_files, noise_file, capsys):
    assert main(match_argv(tiny_sd_path, image_files, noise_file, "--json")) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert main(match_argv(tiny_sd_path, image_files, noise_file, "--csv")) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["scorer", "image", *CAPTIONS]
    assert [r[1] for r in rows[1:]] == [str(p) for p in image_files[:2]]
    assert np.allclose([[float(x) for x in r[2:]] for r in rows[1:]], scores, rtol=1e-6)
    assert main(match_argv(tiny_sd_path, image_files, noise_file)) == 0
    table = capsys.readouterr().out
    best = [int(np.argmax(row)) for row in scores]
    for path, row, b in zip(image_files[:2], scores, best):
        line = next(x for x in table.splitlines() if x.startswith(str(path)))
        assert f"{row[b]:.6f}*" in line and line.count("*") == 1


def test_normalized_scores_subtract_the_unconditional_error_trial_by_trial(tiny_sd_path, image_files):
    clf = DiffusionClassifier.from_pretrained(str(tiny_sd_path), device="cpu")
    steps = interval_grid(250)
    plain = DiffusionMatcher(clf, steps, seed=5)
    norm = DiffusionMatcher(clf, steps, seed=5, normalize=True)
    image = Image.open(image_files[0])
    errors = norm.errors(image, CAPTIONS[:2])  # captions, then the empty prompt, on the same trials
    assert errors.shape == (3, 4)
    uncond = DiffusionMatcher(clf, steps, seed=5).errors(image, [""])[0]
    assert torch.allclose(errors[2], uncond, rtol=1e-5)
    want = -(errors[:2] - errors[2]).mean(1)
    assert torch.allclose(norm([image], CAPTIONS[:2])[0], want, rtol=1e-5)
    assert torch.allclose(plain([image], CAPTIONS[:2])[0], -errors[:2].mean(1), rtol=1e-5)
    assert norm.calls(1, 2) == 12 and plain.calls(1, 2) == 8


def test_caption_scores_arithmetic():
    errors = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.5, 1.5]], dtype=torch.float64)
    assert caption_scores(errors, 3, normalize=False).tolist() == [-2.0, -2.0, -1.0]
    assert caption_scores(errors, 2, normalize=True).tolist() == [-1.0, -1.0]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--captions", "a"], "give --model"),
        (["--model", "x", "--seed", "1", "--noise-file", "n.pt", "--captions", "a"], "only one of --seed"),
        (["--baseline", "openclip:x", "--captions", "a"], "bad --baseline"),
    ],
)
def test_bad_input_is_a_one_line_error(image_files, capsys, argv, message):
    assert main(["match", "--images", str(image_files[0]), *argv]) == 2
    assert message in capsys.readouterr().err


def test_interval_grid():
    assert interval_grid(250) == (125, 375, 625, 875)
    assert len(interval_grid(1)) == 1000 and interval_grid(1)[:2] == (0, 1)
    with pytest.raises(ValueError, match="--t-interval"):
        interval_grid(0)

"""The rule every command follows: exit codes, one line per problem, -q, --version, a light start, standard JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier import names, strict_json
from diffusion_classifier.cli import COMMANDS, build_parser, main
from diffusion_classifier.cli import classify as classify_command
from diffusion_classifier.cli.options import load_classifier, resolved_schedule
from diffusion_classifier.cli.rules import exit_code, show_progress
from diffusion_classifier.core.noise import load_noise_file
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.models import resolve_device
from test_winoground import noise_file, wino_argv, wino_dir  # noqa: F401 (fixtures)

SRC = str(Path(__file__).resolve().parent.parent / "src")
#: what must not load while the command line parses its arguments or prints its help
HEAVY = {"torch", "diffusers", "transformers", "datasets", "matplotlib", "scipy", "sklearn", "numpy"}
#: the least each command needs before its argument errors can show
REQUIRED = {
    "classify": ["x.png", "--model", "m"],
    "demo": [],
    "eval": ["--dataset", "d", "--out", "o"],
    "report": ["r"],
    "calibrate": ["--model", "m", "--data", "d", "--out", "o"],
    "winoground": [],
    "match": ["--images", "x.png", "--captions", "c"],
    "bench": ["--random-weights", "tiny"],
    "train": ["--out", "o"],
    "models": [],
    "serve": [],
}
SEEDED = ["classify", "demo", "eval", "calibrate", "winoground", "match", "train"]
BATCHED = ["classify", "demo", "eval", "calibrate", "winoground", "match"]  # (label, trial) pairs per call


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def strict_loads(text: str):
    """json.loads that fails on NaN, Infinity and -Infinity (which no standard JSON parser accepts)."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[Path]:
    """Two 28x28 grey images for builtin:mnist."""
    d = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(2):
        paths.append(d / f"digit{i}.png")
        Image.fromarray(rng.integers(0, 256, size=(28, 28), dtype=np.uint8), "L").save(paths[-1])
    return paths


MNIST = ["--model", "builtin:mnist", "--labels", "3", "8", "--timesteps", "100,500,900", "--device", "cpu"]


# --- the exit codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("done,failed,code", [(3, 0, 0), (0, 0, 0), (2, 1, 1), (0, 3, 2)])
def test_exit_code_rule(done, failed, code):
    assert exit_code(done, failed) == code


def test_classify_exits_2_when_every_image_is_bad_and_1_when_some_are(digits, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, out, err = run_cli(capsys, "classify", bad, tmp_path / "missing.png", *MNIST, "--json")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "cannot read image" in lines[0] and "image not found" in lines[1]
    code, out, err = run_cli(capsys, "classify", digits[0], bad, *MNIST, "--json")
    assert code == 1 and [strict_loads(x)["image"] for x in out.splitlines()] == [str(digits[0])]
    assert "cannot read image" in one_line(err)


def test_winoground_exits_1_with_a_failed_example(tiny_sd_path, wino_dir, noise_file, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "wino"
    shutil.copytree(wino_dir, data)
    (data / "images" / "ex_1_img_0.png").write_bytes(b"not a png")
    code, out, err = run_cli(capsys, *wino_argv(tiny_sd_path, data, noise_file))
    result = strict_loads(out)
    assert code == 1 and result["failed"] == 1 and result["n"] == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # the failed example, in one line


def test_winoground_with_every_example_failed_exits_2_with_standard_json(
    tiny_sd_path,
    wino_dir,  # noqa: F811
    noise_file,  # noqa: F811
    tmp_path,
    capsys,
):
    data = tmp_path / "wino"
    shutil.copytree(wino_dir, data)
    for png in (data / "images").iterdir():
        png.write_bytes(b"not a png")
    code, out, err = run_cli(capsys, *wino_argv(tiny_sd_path, data, noise_file))
    result = strict_loads(out)  # no examples: the scores are undefined, written as null (not NaN)
    assert code == 2 and result["n"] == 0 and result["failed"] == 3
    assert result["text_score"] is None and "Traceback" not in err


def test_match_exits_1_with_a_bad_image_and_2_with_no_good_one(tiny_sd_path, image_files, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    argv = ["match", "--model", tiny_sd_path, "--captions", "a cat", "a dog", "--t-interval", "500", "--json"]
    code, out, err = run_cli(capsys, *argv, "--images", image_files[0], bad)
    assert code == 1 and strict_loads(out)["images"] == [str(image_files[0])]
    assert "cannot read image" in one_line(err)
    code, out, err = run_cli(capsys, *argv, "--images", bad)
    assert code == 2 and out == "" and "cannot read image" in one_line(err)


# --- one line per problem ------------------------------------------------------------------------------


#: a malformed value for each command
BAD_VALUE = {
    **{c: ["--seed", "x"] for c in SEEDED},
    "report": ["--json=yes"],
    "bench": ["--iters", "x"],
    "models": ["--json=yes"],
    "serve": ["--port", "x"],
}


def argument_errors() -> list[list[str]]:
    cases = []
    for command in COMMANDS:
        cases.append([command, *REQUIRED[command], "--no-such-flag"])
        cases.append([command, *REQUIRED[command], *BAD_VALUE[command]])
        if REQUIRED[command]:
            cases.append([command])  # the required arguments missing
    return cases


@pytest.mark.parametrize("argv", argument_errors(), ids=" ".join)
def test_every_argument_error_is_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    line = one_line(err)
    assert exc.value.code == 2 and out == ""
    assert line.startswith(f"diffusion-classifier {argv[0]}: error: ") and line.endswith("(see --help)")


def test_an_unexpected_error_is_one_line_and_with_v_a_traceback(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(classify_command, "run", boom)
    code, _, err = run_cli(capsys, "classify", "x.png", "--model", "m")
    assert code == 2 and "unexpected RuntimeError: boom" in one_line(err) and "-v" in err
    code, _, err = run_cli(capsys, "-v", "classify", "x.png", "--model", "m")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].endswith("unexpected RuntimeError: boom")


@pytest.mark.parametrize(
    "exc,code,message",
    [
        (PermissionError(13, "Permission denied", "/runs/x"), 2, "Permission denied: /runs/x"),
        (OSError(28, "No space left on device", "out.json"), 2, "No space left on device: out.json"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (UserInputError("a bad thing; the fix"), 2, "a bad thing; the fix"),
    ],
)
def test_errors_after_no_work_are_one_line(monkeypatch, capsys, exc, code, message):
    def fail(args):
        raise exc

    monkeypatch.setattr(classify_command, "run", fail)
    got, _, err = run_cli(capsys, "classify", "x.png", "--model", "m")
    assert got == code and message in one_line(err)


def test_an_error_after_some_finished_work_exits_1(monkeypatch, capsys):
    def partial(args):
        args.tally.done += 1
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(classify_command, "run", partial)
    code, _, err = run_cli(capsys, "classify", "x.png", "--model", "m")
    assert code == 1 and "the disk went away" in one_line(err)


def test_stdout_closed_early_ends_quietly(digits):
    """`classify ... --json | head -c 1`: the reader goes away after one byte; no BrokenPipe traceback."""
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "diffusion_classifier", "classify", *map(str, digits * 2), *MNIST, "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(1) == b"{"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0 and "Traceback" not in err and "Broken" not in err, err


# --- numbers and devices -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", SEEDED)
@pytest.mark.parametrize("seed", ["-1", str(2**64), "1.5"])
def test_seeds_outside_the_range_are_refused(command, seed, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, *REQUIRED[command], "--seed", seed])
    assert exc.value.code == 2 and "seed" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", SEEDED)
def test_the_largest_seed_is_accepted(command):
    assert build_parser().parse_args([command, *REQUIRED[command], "--seed", str(2**63 - 1)]).seed == 2**63 - 1


def test_the_largest_seed_draws_noise():
    from diffusion_classifier.core.noise import NoiseBank

    eps = NoiseBank((1, 2, 2), seed=2**63 - 1)[[0, 70]]
    assert eps.shape == (2, 1, 2, 2) and torch.isfinite(eps).all()
    assert torch.equal(NoiseBank((1, 2, 2), seed=5)[[3]], NoiseBank((1, 2, 2), seed=5)[[3]])


@pytest.mark.parametrize("command", BATCHED)
def test_batch_size_takes_auto_and_refuses_zero(command, capsys):
    assert build_parser().parse_args([command, *REQUIRED[command], "--batch-size", "auto"]).batch_size is None
    with pytest.raises(SystemExit):
        main([command, *REQUIRED[command], "--batch-size", "0"])
    assert "positive" in one_line(capsys.readouterr().err)


def test_calibrate_runs_with_batch_size_auto(digits, tmp_path, capsys):
    for label, image in zip("38", digits):
        (tmp_path / "data" / label).mkdir(parents=True)
        shutil.copy(image, tmp_path / "data" / label / image.name)
    out = tmp_path / "weights.json"
    data = f"folder:{tmp_path / 'data'}"
    code, stdout, err = run_cli(capsys, "calibrate", "--model", "builtin:mnist", "--data", data, "--per-class", 1,
                                "--trials", 2, "--batch-size", "auto", "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, err
    assert strict_loads(out.read_text())["kind"] == "timestep_weights" and f"wrote {out}" in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps"])
def test_an_unavailable_device_is_one_line(device, digits, capsys):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    code, out, err = run_cli(capsys, "classify", digits[0], *MNIST, "--device", device)
    line = one_line(err)
    assert code == 2 and out == "" and ("not available" in line or "no CUDA device" in line)


def test_a_cuda_index_beyond_the_device_count_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserInputError, match="has 2 CUDA device"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


# --- noise files and JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_noise_files_with_non_finite_values_are_refused(bad, tmp_path, digits, capsys):
    noise = torch.randn(3, 1, 28, 28)
    noise[1, 0, 5, 5] = bad
    np.save(tmp_path / "noise.npy", noise.numpy())
    torch.save(noise, tmp_path / "noise.pt")
    for path in (tmp_path / "noise.npy", tmp_path / "noise.pt"):
        with pytest.raises(UserInputError, match="NaN or infinite"):
            load_noise_file(path)
    code, out, err = run_cli(capsys, "classify", digits[0], *MNIST, "--noise-file", tmp_path / "noise.npy")
    assert code == 2 and out == "" and "NaN or infinite" in one_line(err)


def test_noise_files_of_integers_or_wrong_shape_are_one_line(tmp_path, digits, capsys):
    np.save(tmp_path / "ints.npy", np.zeros((3, 1, 28, 28), dtype=np.int64))
    with pytest.raises(UserInputError, match="int64 values; noise is float"):
        load_noise_file(tmp_path / "ints.npy")
    np.save(tmp_path / "shape.npy", np.zeros((3, 4, 8, 8), dtype=np.float32))
    code, _, err = run_cli(capsys, "classify", digits[0], *MNIST, "--noise-file", tmp_path / "shape.npy")
    assert code == 2 and "the model needs (1, 28, 28)" in one_line(err)


def test_json_is_standard_non_finite_numbers_become_null():
    text = strict_json.dumps({"a": float("nan"), "b": [1.5, float("inf")], "c": (-float("inf"),), "d": "NaN"})
    assert strict_loads(text) == {"a": None, "b": [1.5, None], "c": [None], "d": "NaN"}


def test_classify_json_is_data_only_and_standard(digits, capsys):
    code, out, err = run_cli(capsys, "classify", *digits, *MNIST, "--json")
    rows = [strict_loads(line) for line in out.splitlines()]
    assert code == 0 and [r["image"] for r in rows] == [str(p) for p in digits] and err == ""


# --- quiet, fast and helpful ---------------------------------------------------------------------------


def test_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    version = metadata.version("diffusion-classifier")
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"diffusion-classifier {version}"


def test_parsing_and_help_import_no_heavy_library():
    """Building the parser, parsing a command line and formatting every help page load no torch (nor numpy,
    matplotlib, ...): --help, --version and argument errors answer before those seconds of imports."""
    code = f"""
import sys
from diffusion_classifier.cli import build_parser
parser = build_parser()
parser.parse_args(["classify", "x.png", "--model", "m", "--labels", "a", "b", "--seed", "3", "-q"])
parser.format_help()
for command in parser._subparsers._group_actions[0].choices.values():
    command.format_help()
heavy = {sorted(HEAVY)!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
assert not loaded, loaded
"""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr


def subparsers() -> dict[str, argparse.ArgumentParser]:
    return build_parser()._subparsers._group_actions[0].choices


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_and_a_clean_help(command):
    p = subparsers()[command]
    assert p.description and len(p.description) > 40
    text = p.format_help()
    assert "%%" not in text and "--quiet" in text and "--verbose" in text
    if command == "report":
        assert "95% Wilson" in text


def test_quiet_and_verbose_go_before_or_after_the_command():
    parse = build_parser().parse_args
    assert parse(["-q", "report", "r"]).quiet and parse(["report", "r", "-q"]).quiet
    assert not parse(["report", "r"]).quiet
    assert parse(["-v", "report", "r"]).verbose  # the subcommand's own -v does not reset it


def test_progress_only_on_a_terminal_and_never_with_quiet(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert show_progress(argparse.Namespace(quiet=False)) and not show_progress(argparse.Namespace(quiet=True))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not show_progress(argparse.Namespace(quiet=False))


def test_offered_names_are_the_registries():
    from diffusion_classifier.core.schedules import SCHEDULES, schedule_names
    from diffusion_classifier.core.weighting import WEIGHTINGS
    from diffusion_classifier.models.fast import COMPILE_MODES
    from diffusion_classifier.models.random_weights import ARCHITECTURES

    assert names.SCHEDULES == tuple(schedule_names()) == tuple(sorted(SCHEDULES))
    assert tuple(ARCHITECTURES) == names.ARCHITECTURES
    assert (names.WEIGHTINGS, names.COMPILE_MODES) == (WEIGHTINGS, COMPILE_MODES)


# --- defaults stay the model's -------------------------------------------------------------------------


def test_one_racing_flag_keeps_the_models_other_racing_defaults():
    args = build_parser().parse_args(["classify", "x.png", "--model", "builtin:mnist", "--max-trials", "300"])
    clf = load_classifier(args, device="cpu")
    default, _ = clf.default_schedule
    assert default.alpha == 0.01  # builtin:mnist's classifier_config.json
    schedule, loss = resolved_schedule(args, clf)
    assert (schedule.alpha, schedule.cap, loss) == (0.01, 300, "l2")
    args = build_parser().parse_args(["classify", "x.png", "--model", "builtin:mnist", "--alpha", "0.05"])
    assert resolved_schedule(args, clf)[0] == dataclasses.replace(default, alpha=0.05)

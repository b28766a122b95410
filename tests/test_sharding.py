"""Real processes: a SIGKILLed run resumes to the uninterrupted records; torchrun shards equal one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from builders import comparable
from diffusion_classifier.cli import main
from diffusion_classifier.runs.engine import RunStore, read_records

N_PER_CLASS = 10
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """20 small random images in two class folders."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir()
        for k in range(N_PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / label / f"{k:02d}.png")
    return root


def eval_argv(folder, model, out, *extra: str) -> list[str]:
    return [
        "eval", "--dataset", f"folder:{folder}", "--model", str(model), "--out", str(out), "--device", "cpu",
        "--timesteps", "100,300,500,700,900", "--batch-size", "1", "--seed", "7", *extra,
    ]  # fmt: skip


def python_m(*argv: str) -> list[str]:
    return [sys.executable, "-m", "diffusion_classifier", *argv]


def eval_here(argv: list[str]) -> None:
    """Run the CLI in this process with one thread, as the subprocesses (OMP_NUM_THREADS=1) run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(folder, tiny_sd_path, tmp_path_factory):
    """The records of one uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    eval_here(eval_argv(folder, tiny_sd_path, out))
    return RunStore(out).records()


def lines_per_index(store: RunStore) -> list[int]:
    return sorted(r["index"] for p in store.record_files() for r in read_records(p))


def test_sigkill_then_rerun_gives_exactly_the_uninterrupted_records(folder, tiny_sd_path, reference, tmp_path):
    out = tmp_path / "run"
    store = RunStore(out)
    argv = python_m(*eval_argv(folder, tiny_sd_path, out))
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if store.dir.is_dir() and len(store.records()) >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = len(store.records())
    assert 3 <= at_kill < 2 * N_PER_CLASS, "the kill must land part-way through the run"

    eval_here(argv[3:])  # the rerun, in this process (a second interpreter start costs half a minute here)
    assert lines_per_index(store) == list(range(2 * N_PER_CLASS))  # none missing, none twice
    assert comparable(store.records()) == comparable(reference)


def test_torchrun_two_processes_equal_one_process(folder, tiny_sd_path, reference, tmp_path):
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*torchrun, "-m", "diffusion_classifier", *eval_argv(folder, tiny_sd_path, out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    store = RunStore(out)
    assert len(store.record_files()) == 2
    ranks = {r["index"]: r["rank"] for r in store.records().values()}
    assert set(ranks.values()) == {0, 1}
    assert lines_per_index(store) == list(range(2 * N_PER_CLASS))
    assert comparable(store.records()) == comparable(reference)
    assert done.stdout.count("| top-1 %") == 1  # only rank 0 prints the summary, after both finished
    assert f"{2 * N_PER_CLASS}/{2 * N_PER_CLASS}" in done.stdout

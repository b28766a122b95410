"""Shared fixtures: the tiny model folders of tiny_models.py (built once a session), images, a decision helper."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread: on a small shared machine, oversubscribed OpenMP threads run ~20x slower, not faster.
torch.set_num_threads(1)


def lowest_mean_error(result) -> str:
    """The label (errors key) of the lowest mean error: the decision of a schedule that gives every label every trial
    (random weights decide nothing else a test could know in advance)."""
    return min(result.errors, key=lambda k: sum(result.errors[k]["values"]) / len(result.errors[k]["values"]))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """tiny_pipeline(name): the folder tiny_models.TINY[name] builds, built once a session."""
    from tiny_models import TINY

    built = {}

    def folder(name: str):
        if name not in built:
            built[name] = TINY[name](tmp_path_factory.mktemp(name) / "pipe")
        return built[name]

    return folder


@pytest.fixture(scope="session")
def tiny_sd_path(tiny_pipeline):
    return tiny_pipeline("stable-diffusion")


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    """Three small RGB images of different sizes and modes, saved as PNG/JPEG."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h, mode) in enumerate([(40, 30, "RGB"), (24, 50, "L"), (32, 32, "RGBA")]):
        arr = rng.integers(0, 256, size=(h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGBA" if mode == "RGBA" else "RGB").convert(mode)
        p = d / f"img{i}.{'jpg' if mode == 'L' else 'png'}"
        img.save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_clip_path(tiny_pipeline):
    return tiny_pipeline("clip")

"""Image-text matching: the score matrix of images x captions, from a diffusion model or any other scorer.

A diffusion model scores the pair (image x, caption c) by minus its mean noise-prediction error over a
fixed list of timesteps, the i-th timestep with noise i (Li et al. 2023, §5.2 / SPEC.md §4). Every image
is encoded once and all captions are candidates of one Full schedule, so every pair of every image sees
the same (t, eps) trials. With normalize, each pair's error is taken relative to the unconditional
(empty prompt) error of the same image on the same trial: a-priori likely images stop winning every
caption, the known fix for the poor image score.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..core.estimator import ErrorLedger, Loss, model_error_fn
from ..core.schedules import Full
from ..data.images import DEFAULT_OPTIONS, ImageOptions, load_image
from ..errors import UserInputError
from ..pipeline import DiffusionClassifier

UNCONDITIONAL = ""  # the empty prompt: the condition classifier-free guidance trains as "no text"


class PairScorer(Protocol):
    """Anything that scores every image against every caption: scores[k, j] for image k, caption j."""

    name: str

    def __call__(self, images: Sequence[Image.Image], captions: Sequence[str]) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


def caption_scores(errors: torch.Tensor, n_captions: int, normalize: bool) -> torch.Tensor:
    """Scores (n_captions,) from errors (n_conditions, n_trials): minus the mean over trials, float64.

    The mean is taken as run_winoground.py takes it, over each pair's float32 errors (`-errors.mean()`), so
    the pair scores and the comparisons between them are the official ones. normalize: the last row is the
    unconditional error, subtracted trial by trial first.
    """
    e = errors[:n_captions].float()
    if normalize:
        e = e - errors[n_captions].float()
    return torch.stack([-row.mean() for row in e]).double()


@dataclass
class DiffusionMatcher:
    """Scores (image, caption) pairs with a diffusion model on fixed timesteps, shared noise (SPEC.md §4)."""

    clf: DiffusionClassifier
    timesteps: tuple[int, ...]
    seed: int = 0
    noise: str | Path | None = None  # a noise file; trial i (the i-th timestep) uses its row i
    loss: Loss = "l2"
    normalize: bool = False
    batch_size: int = 32
    name: str = "diffusion"

    def __post_init__(self) -> None:
        if self.clf.model.conditioning != "text":
            raise UserInputError("image-text matching needs a text-conditioned model (e.g. Stable Diffusion)")

    def errors(self, image: Image.Image, captions: Sequence[str]) -> torch.Tensor:
        """Per-trial errors (n_captions [+1 unconditional], n_timesteps) of one image, in timestep order."""
        conditions = (*captions, UNCONDITIONAL) if self.normalize else tuple(captions)
        cond = self.clf.conditions(conditions)
        x0 = self.clf.model.encode(image)
        noise = self.clf.noise_bank(self.seed, self.noise)
        ledger = ErrorLedger(model_error_fn(self.clf.model, x0, cond, noise, self.loss, self.batch_size), len(cond))
        Full(self.timesteps).run(ledger, self.clf.model.num_train_timesteps)
        return torch.tensor(ledger.errors, dtype=torch.float64)

    def __call__(self, images: Sequence[Image.Image], captions: Sequence[str]) -> torch.Tensor:
        """scores[k, j] = -mean_i error(image k, caption j, t_i, eps_i) (a float32 mean, as the official), float64."""
        return torch.stack(
            [caption_scores(self.errors(img, captions), len(captions), self.normalize) for img in images]
        )

    def calls(self, n_images: int, n_captions: int) -> int:
        """Model calls that scoring n_images x n_captions costs."""
        return n_images * (n_captions + self.normalize) * len(self.timesteps)

    def describe(self) -> dict[str, Any]:
        return {
            "scorer": "diffusion",
            "model": self.clf.model.describe(),
            "timesteps": len(self.timesteps),
            "loss": self.loss,
            "normalize": self.normalize,
        }


def check_captions(captions: Sequence[str]) -> list[str]:
    captions = [str(c) for c in captions]
    if not captions:
        raise UserInputError("no captions given: pass --captions")
    if any(not c.strip() for c in captions):
        raise UserInputError("empty caption in --captions")
    return captions


@dataclass(frozen=True)
class MatchResult:
    """scores[k][j]: how well image k matches caption j (higher is better)."""

    images: list[str]
    captions: list[str]
    scores: list[list[float]]
    scorer: str

    def best_caption(self) -> list[int]:
        """For each image, the index of its highest-scoring caption."""
        return [max(range(len(row)), key=row.__getitem__) for row in self.scores]

    def to_dict(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "images": self.images, "captions": self.captions, "scores": self.scores}


def match(
    scorer: PairScorer,
    images: Sequence[str | Path],
    captions: Sequence[str],
    progress: bool = False,
    image_options: ImageOptions = DEFAULT_OPTIONS,
) -> MatchResult:
    """The score matrix of image files x captions (every image decoded and scored in turn)."""
    captions = check_captions(captions)
    if not images:
        raise UserInputError("no images given: pass --images")
    rows = []
    for path in tqdm(images, desc="images", unit="img", disable=not progress, file=sys.stderr):
        rows.append(scorer([load_image(path, image_options)], captions)[0].tolist())
    return MatchResult([str(p) for p in images], captions, rows, scorer.name)

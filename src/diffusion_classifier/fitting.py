"""Fitting on a few labelled images: timestep weights and the probabilities' temperature, saved as one JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .calibration import elbo_scale, fit_temperature
from .errors import UserInputError
from .schedules import Full, master_grid
from .timesteps import ordered_grid
from .weighting import TimestepWeights, fit_weights


@dataclass(frozen=True)
class Calibration:
    """Fitted timestep weights, the temperature for them, and the temperature for uniform weights."""

    weights: TimestepWeights
    temperature: float
    temperature_uniform: float
    n_images: int
    n_trials: int

    def save(self, path: str | Path) -> None:
        """A weights JSON (readable by --weights) that also records the temperatures."""
        self.weights.save(path)
        d = json.loads(Path(path).read_text())
        d.update(
            temperature=self.temperature,
            temperature_uniform=self.temperature_uniform,
            n_images=self.n_images,
            n_trials=self.n_trials,
        )
        Path(path).write_text(json.dumps(d, indent=1) + "\n")


def error_matrices(clf, images: Sequence[Any], labels: list[str], n_trials: int = 100, **call_kw) -> torch.Tensor:
    """Errors (N, K, n_trials) of every label on the first n_trials stratified trials of the 500-point grid."""
    T = clf.model.num_train_timesteps
    sched = Full(tuple(ordered_grid(master_grid(500, T), "stratified")[:n_trials]))
    out = []
    for image in images:
        res = clf(image, labels, schedule=sched, **call_kw)
        out.append(torch.tensor([res.errors[k]["values"] for k in labels]))
    return torch.stack(out)


def calibrate(
    clf, images: Sequence[Any], labels: list[str], truth: list[str], n_trials: int = 100, n_bins: int = 10, **call_kw
) -> Calibration:
    """Weights (weighting.fit_weights) and NLL-optimal temperatures from labelled images."""
    if len(images) < 2 or len(images) != len(truth):
        raise UserInputError("calibration needs at least 2 labelled images, one label each")
    missing = sorted(set(truth) - set(labels))
    if missing:
        raise UserInputError(f"label {missing[0]!r} of a calibration image is not among the candidate labels")
    T = clf.model.num_train_timesteps
    err = error_matrices(clf, images, labels, n_trials, **call_kw).double()
    y = torch.tensor([labels.index(t) for t in truth])
    ts = torch.tensor(ordered_grid(master_grid(500, T), "stratified")[:n_trials])
    weights = fit_weights(err, y, ts, T, n_bins)
    w = weights.table(T)[ts]
    scale = elbo_scale(clf.model.latent_shape, T)
    tau = fit_temperature((err * w).sum(2) / w.sum(), y, scale)
    return Calibration(weights, tau, fit_temperature(err.mean(2), y, scale), len(images), n_trials)

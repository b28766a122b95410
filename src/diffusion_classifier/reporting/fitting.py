"""Fitting on a few labelled images: timestep weights and the probabilities' temperature, saved as one JSON.

The images are classified through the run engine (runs.execute, in memory): every label on the same
stratified trials, each image's errors saved in its record; a failed image is left out of the fit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import ClassifierConfig
from ..core.calibration import elbo_scale, fit_temperature
from ..core.schedules import Full, master_grid
from ..core.timesteps import ordered_grid
from ..core.weighting import TimestepWeights, fit_weights
from ..data.datasets import EvalDataset
from ..data.prompts import Candidates
from ..errors import UserInputError
from ..runs.engine import EvalJob, eval_candidates, eval_work, execute


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


def calibration_schedule(n_trials: int, T: int) -> Full:
    """Every label on the first n_trials stratified timesteps of the 500-point grid (trial i: noise i)."""
    return Full(tuple(ordered_grid(master_grid(500, T), "stratified")[:n_trials]))


def error_matrix(records: Sequence[dict[str, Any]], cands: Candidates, n_classes: int) -> torch.Tensor:
    """Errors (N, K, n_trials) of every class (its one candidate) from the records' saved errors."""
    key = dict(zip(cands.class_ids, cands.keys()))
    return torch.tensor([[r["errors"][key[k]]["e"] for k in range(n_classes)] for r in records], dtype=torch.float64)


def first_per_class(label_ids: Sequence[int], n: int) -> list[int]:
    """The first n images of every class, class by class (the images a calibration fits on)."""
    return [i for k in sorted(set(label_ids)) for i in [j for j, y in enumerate(label_ids) if y == k][:n]]


def calibrate_dataset(
    clf,
    dataset: EvalDataset,
    indices: Sequence[int],
    n_trials: int = 100,
    n_bins: int = 10,
    config: ClassifierConfig | None = None,
    template: str | None = None,
    progress: bool = False,
) -> tuple[Calibration, dict[int, dict[str, Any]]]:
    """Fit on the dataset images at indices: every class evaluated on the same stratified trials through the
    run engine (a failed image is left out of the fit); the calibration and each image's record."""
    T = clf.model.num_train_timesteps
    settings = replace(config or ClassifierConfig(), schedule=calibration_schedule(n_trials, T))
    indices = tuple(indices)
    cands = eval_candidates(clf, dataset, indices, list(dataset.class_names), template)
    job = EvalJob.of(dataset, indices, cands, settings.resolved(clf.model), save_errors=True)
    records = execute(lambda: eval_work(clf, job), progress=progress)
    ok = [records[i] for i in indices if records.get(i, {}).get("status") == "ok"]
    if len(ok) < 2:
        raise UserInputError(f"calibration needs at least 2 labelled images that can be read, got {len(ok)}")
    err = error_matrix(ok, cands, len(dataset.class_names))
    y = torch.tensor([r["label_index"] for r in ok])
    return fit(err, y, settings.schedule.timesteps, clf.model, n_bins), records


def calibrate(
    clf,
    images: Sequence[Any],
    labels: list[str],
    truth: list[str],
    n_trials: int = 100,
    n_bins: int = 10,
    config: ClassifierConfig | None = None,
    template: str | None = None,
) -> Calibration:
    """Weights (weighting.fit_weights) and NLL-optimal temperatures from labelled images (in memory)."""
    if len(images) < 2 or len(images) != len(truth):
        raise UserInputError("calibration needs at least 2 labelled images, one label each")
    missing = sorted(set(truth) - set(labels))
    if missing:
        raise UserInputError(f"label {missing[0]!r} of a calibration image is not among the candidate labels")
    dataset = EvalDataset.from_names("calibration", "given", truth, lambda i: images[i], class_names=labels)
    return calibrate_dataset(clf, dataset, range(len(images)), n_trials, n_bins, config, template)[0]


def fit(err: torch.Tensor, y: torch.Tensor, timesteps: Sequence[int], model, n_bins: int = 10) -> Calibration:
    """Timestep weights and the temperatures (with them, and with uniform weights) of error matrices (N, K, n)."""
    T = model.num_train_timesteps
    ts = torch.tensor(timesteps)
    weights = fit_weights(err, y, ts, T, n_bins)
    w = weights.table(T)[ts]
    scale = elbo_scale(model.latent_shape, T)
    tau = fit_temperature((err * w).sum(2) / w.sum(), y, scale)
    return Calibration(weights, tau, fit_temperature(err.mean(2), y, scale), len(err), len(timesteps))

"""Timestep weights w(t) for the per-candidate aggregate: uniform, exp(-7 t/T), or fitted on labelled images.

A weighting turns a candidate's mean error into the weighted mean sum_k w(t_k) e_k / sum_k w(t_k); the
ErrorLedger applies it in one place (ErrorLedger.trial_values) and keeps the raw errors unchanged.
Weights are a table w[t] for t = 0..T-1, stored as piecewise-constant bins in JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import UserInputError
from ..names import WEIGHTINGS


@dataclass(frozen=True)
class TimestepWeights:
    """w(t) = values[b] for edges[b] <= t < edges[b + 1]; edges run from 0 to T."""

    edges: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.values) + 1 or list(self.edges) != sorted(set(self.edges)):
            raise UserInputError("timestep weights need increasing edges, one more than values")
        if not all(math.isfinite(v) for v in self.values):  # NaN slips through the comparisons below
            raise UserInputError("timestep weights must be finite numbers (no NaN or Infinity)")
        if min(self.values) < 0 or max(self.values) <= 0:
            raise UserInputError("timestep weights must be non-negative and not all zero")

    def table(self, T: int) -> torch.Tensor:
        """w[t] for t = 0..T-1 (float64)."""
        if self.edges[0] != 0 or self.edges[-1] != T:
            raise UserInputError(f"timestep weights cover {self.edges[0]}..{self.edges[-1]}, the model has 0..{T}")
        widths = torch.tensor(self.edges[1:]) - torch.tensor(self.edges[:-1])
        return torch.tensor(self.values, dtype=torch.float64).repeat_interleave(widths)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": "timestep_weights", **asdict(self)}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TimestepWeights:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            return cls(tuple(int(e) for e in d["edges"]), tuple(float(v) for v in d["values"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise UserInputError(
                f"cannot read timestep weights from {path}: expected JSON with 'edges' and 'values'"
            ) from None


def exp_weights(T: int, rate: float = 7.0) -> torch.Tensor:
    """w(t) = exp(-rate t / T) (Clark & Jaini 2023, who found rate 7 best for Imagen)."""
    return torch.exp(-rate * torch.arange(T, dtype=torch.float64) / T)


def weight_table(spec: str | Path | TimestepWeights | torch.Tensor | None, T: int) -> torch.Tensor | None:
    """w[t] for a weighting name ('uniform', 'exp'), a JSON file, TimestepWeights or a table; None = uniform."""
    if spec is None or (isinstance(spec, str) and spec == "uniform"):
        return None
    if isinstance(spec, torch.Tensor):
        if spec.shape != (T,):
            raise UserInputError(f"a weight table needs shape ({T},), got {tuple(spec.shape)}")
        return spec.double()
    if isinstance(spec, TimestepWeights):
        return spec.table(T)
    if spec == "exp":
        return exp_weights(T)
    if Path(spec).is_file():
        return TimestepWeights.load(spec).table(T)
    raise UserInputError(f"unknown timestep weighting {spec!r}: use {', '.join(WEIGHTINGS)} or a weights JSON file")


def fit_weights(
    errors: torch.Tensor, labels: torch.Tensor, timesteps: torch.Tensor, T: int, n_bins: int = 10
) -> TimestepWeights:
    """Bin weights w_b proportional to mu_b / sigma_b^2, fitted on labelled images' error matrices.

    errors (N, K, n): each image's errors for every label on the same n trials at `timesteps` (n,);
    labels (N,): the true label index. For each image, d_k = e[closest wrong label, k] - e[true, k];
    mu_b and sigma_b^2 are the mean and pooled within-image variance of d over the trials in bin b.
    For independent trials, sum_k w d_k / sqrt(sum_k w^2 sigma^2) (the paired test's statistic and the
    weighted decision's margin in noise units) is largest for w_b proportional to mu_b / sigma_b^2.
    """
    N = len(errors)
    true = errors[torch.arange(N), labels]  # (N, n)
    wrong = errors.clone()
    wrong[torch.arange(N), labels] = float("inf")
    d_all = wrong - true[:, None]  # (N, K, n)
    rival = d_all.mean(2).argmin(1)  # the closest wrong label decides each image's margin
    d = d_all[torch.arange(N), rival].double()  # (N, n)
    edges = torch.linspace(0, T, n_bins + 1).round().long()
    bins = torch.bucketize(timesteps, edges[1:], right=True)
    values = []
    for b in range(n_bins):
        db = d[:, bins == b]
        if db.shape[1] < 2:
            values.append(0.0)
            continue
        mu, var = db.mean(), db.var(1).mean()
        values.append(max(float(mu / var), 0.0) if var > 0 else 0.0)
    top = max(values)
    if top <= 0:  # no bin separates the labels on average: fall back to uniform weights
        values = [1.0] * n_bins
        top = 1.0
    # a small floor keeps every timestep's weight positive, so any prefix of trials has a defined mean
    return TimestepWeights(tuple(edges.tolist()), tuple(max(v / top, 1e-3) for v in values))

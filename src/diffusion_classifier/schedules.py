"""Schedules: which (candidate, trial) pairs to evaluate, round by round, until one candidate remains.

A schedule is a frozen dataclass with run(ledger, T): it asks the ErrorLedger to evaluate trials for
some candidates, reads the mean errors back, and stops. The ledger's ranking is the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .errors import UserInputError
from .estimator import ErrorLedger, Loss, Trial


class Schedule(Protocol):
    def run(self, ledger: ErrorLedger, T: int) -> None: ...

    def max_trials(self, T: int) -> int:
        """How many distinct noise tensors (trial positions) the schedule may use."""
        ...


def master_grid(max_n: int, T: int = 1000) -> list[int]:
    """The reference code's evenly spaced grid of max_n timesteps (SPEC.md §2)."""
    start = T // max_n // 2
    return list(range(start, T, T // max_n))[:max_n]


def stage_grid(grid: list[int], n: int) -> list[int]:
    """The n timesteps of one stage, taken from the master grid with the reference arithmetic."""
    return grid[len(grid) // n // 2 :: len(grid) // n][:n]


@dataclass(frozen=True)
class Full:
    """Every candidate on the given timesteps; the i-th timestep uses noise i."""

    timesteps: tuple[int, ...]

    def run(self, ledger: ErrorLedger, T: int) -> None:
        check_timesteps(self.timesteps, T)
        ledger.evaluate(range(ledger.n_candidates), [Trial(t, i) for i, t in enumerate(self.timesteps)])

    def max_trials(self, T: int) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class Staged:
    """The published stage-wise elimination (Li et al. 2023, eval_prob_adaptive), arithmetic as released.

    Stage s evaluates the surviving candidates on its grid's timesteps not yet evaluated, n_trials
    trials each; the j-th trial of the i-th timestep in evaluation order uses noise n_trials * i + j.
    Then the to_keep[s] candidates with the lowest mean error over all their trials survive.
    """

    n_samples: tuple[int, ...]
    to_keep: tuple[int, ...]
    n_trials: int = 1

    def __post_init__(self) -> None:
        if len(self.n_samples) != len(self.to_keep) or not self.n_samples:
            raise UserInputError("--n-samples and --to-keep need the same number of stages (at least one)")
        if self.to_keep[-1] != 1:
            raise UserInputError("the last stage of --to-keep must keep 1 candidate")
        if min(self.n_samples) < 1 or min(self.to_keep) < 1 or self.n_trials < 1:
            raise UserInputError("--n-samples, --to-keep and n_trials must be positive")

    def run(self, ledger: ErrorLedger, T: int) -> None:
        grid = master_grid(max(self.n_samples), T)
        remaining = list(range(ledger.n_candidates))
        evaluated: list[int] = []
        for n, k in zip(self.n_samples, self.to_keep):
            ts = [t for t in stage_grid(grid, n) if t not in evaluated]
            trials = [
                Trial(t, self.n_trials * i + j)
                for i, t in enumerate(ts, start=len(evaluated))
                for j in range(self.n_trials)
            ]
            evaluated.extend(ts)
            if len(remaining) > 1 or not ledger.errors[remaining[0]]:
                ledger.evaluate(remaining, trials)
            means = ledger.mean_errors(remaining).tolist()
            order = sorted(range(len(remaining)), key=lambda i: (means[i], i))
            remaining = [remaining[i] for i in order[:k]]

    def max_trials(self, T: int) -> int:
        return max(self.n_samples) * self.n_trials


#: The published per-dataset schedules and losses (SPEC.md §2): name -> (schedule, loss).
PUBLISHED: dict[str, tuple[Staged, Loss]] = {
    "cifar10": (Staged((50, 500), (5, 1)), "l1"),
    "stl10": (Staged((100, 500), (5, 1)), "l1"),
    "pets": (Staged((25, 250), (5, 1)), "l1"),
    "flowers": (Staged((20, 50, 100, 500), (20, 10, 5, 1)), "l1"),
    "food": (Staged((20, 50, 100, 500), (20, 10, 5, 1)), "l2"),
    "aircraft": (Staged((20, 50, 100, 500), (20, 10, 5, 1)), "l2"),
    "imagenet": (Staged((50, 100, 500, 1000), (500, 50, 10, 1)), "l2"),
    "objectnet": (Staged((50, 100, 500, 1000), (25, 10, 5, 1)), "l2"),
}

#: What runs when no schedule is named: the CIFAR-10 stages with the method's default l2 loss.
DEFAULT_SCHEDULE: tuple[Staged, Loss] = (Staged((50, 500), (5, 1)), "l2")


def count_calls(schedule: Schedule, n_candidates: int, T: int = 1000) -> int:
    """Model calls the schedule spends on n_candidates tied candidates (exact for fixed schedules)."""
    ledger = ErrorLedger(lambda pairs: torch.zeros(len(pairs)), n_candidates)
    schedule.run(ledger, T)
    return ledger.calls


def schedule_names() -> list[str]:
    return sorted(SCHEDULES)


def get_schedule(name: str) -> tuple[Schedule, Loss]:
    """A named schedule and its loss; an unknown name lists the valid ones."""
    if name not in SCHEDULES:
        raise UserInputError(f"unknown schedule {name!r}; choose one of: {', '.join(schedule_names())}")
    return SCHEDULES[name]


def parse_timesteps(spec: str, T: int = 1000) -> tuple[int, ...]:
    """'11,311,611' or 'start:stop:step' ranges (Python semantics), comma-separated, in that order."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            if ":" in part:
                out.extend(range(*(int(x) for x in part.split(":"))))
            elif part.strip():
                out.append(int(part))
    except (TypeError, ValueError):
        raise UserInputError(f"bad --timesteps {spec!r}: use '11,311,611' or a range such as '0:1000:50'") from None
    check_timesteps(out, T)
    return tuple(out)


def check_timesteps(timesteps, T: int) -> None:
    if not timesteps:
        raise UserInputError("no timesteps to evaluate")
    bad = [t for t in timesteps if not 0 <= t < T]
    if bad:
        raise UserInputError(f"timestep {bad[0]} is outside the model's range 0..{T - 1}")


SCHEDULES: dict[str, tuple[Schedule, Loss]] = {"default": DEFAULT_SCHEDULE, **PUBLISHED}

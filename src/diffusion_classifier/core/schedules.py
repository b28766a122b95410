"""Schedules: which (candidate, trial) pairs to evaluate, round by round, until one candidate remains.

A schedule is a frozen dataclass whose plan(ledger, T) is a resumable state machine (a generator): it
yields Requests (candidates x trials) through ledger.ask, is sent their errors, which the ledger records,
reads the mean errors back, and stops. The ledger's ranking is the decision. Whoever drives the plan
answers the requests: run(ledger, T) with the ledger's own error function (one image), or the packer
(packer.py) with rows of many images in one model call; the plan cannot tell the difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, get_args

import torch

from ..data.registry import DATASETS, published_schedule_names
from ..errors import UserInputError
from .estimator import ErrorLedger, Loss, Request, Trial, drive
from .timesteps import ORDERS, even_grid, ordered_grid

Steps = Generator[Request, torch.Tensor, None]  # a plan: yields requests, is sent their errors


class Schedule(Protocol):
    def plan(self, ledger: ErrorLedger, T: int) -> Steps:
        """The schedule's steps over one image's ledger (see the module docstring)."""
        ...

    def run(self, ledger: ErrorLedger, T: int) -> None: ...

    def max_trials(self, T: int) -> int:
        """How many distinct noise tensors (trial positions) the schedule may use."""
        ...


def master_grid(max_n: int, T: int = 1000) -> list[int]:
    """The reference code's evenly spaced grid of max_n timesteps (SPEC.md §2)."""
    if max_n > T:  # the grid's step T // max_n would be 0
        raise UserInputError(f"--n-samples asks for {max_n} timesteps, but the model has {T}: give at most {T}")
    start = T // max_n // 2
    return list(range(start, T, T // max_n))[:max_n]


def stage_grid(grid: list[int], n: int) -> list[int]:
    """The n timesteps of one stage, taken from the master grid with the reference arithmetic."""
    return grid[len(grid) // n // 2 :: len(grid) // n][:n]


def interval_grid(t_interval: int, T: int = 1000) -> tuple[int, ...]:
    """range(t_interval // 2, T, t_interval): the DiT and Winoground scripts' timesteps (SPEC.md §3, §4)."""
    if not 1 <= t_interval <= T:
        raise UserInputError(f"--t-interval must lie between 1 and {T}, got {t_interval}")
    return tuple(range(t_interval // 2, T, t_interval))


class Planned:
    """run(ledger, T): the plan driven to its end by the ledger's own error function (one image, no packing)."""

    def plan(self, ledger: ErrorLedger, T: int) -> Steps:
        raise NotImplementedError

    def run(self, ledger: ErrorLedger, T: int) -> None:
        drive(self.plan(ledger, T), ledger.error_fn)


@dataclass(frozen=True)
class Full(Planned):
    """Every candidate on the given timesteps; the i-th timestep uses noise i."""

    timesteps: tuple[int, ...]

    def plan(self, ledger: ErrorLedger, T: int) -> Steps:
        check_timesteps(self.timesteps, T)
        yield from ledger.ask(range(ledger.n_candidates), [Trial(t, i) for i, t in enumerate(self.timesteps)])
        ledger.keep(range(ledger.n_candidates), 1)  # a one-stage Staged with to_keep 1: the same winner

    def max_trials(self, T: int) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class Staged(Planned):
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

    def plan(self, ledger: ErrorLedger, T: int) -> Steps:
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
                yield from ledger.ask(remaining, trials)
            remaining = ledger.keep(remaining, k)  # torch.topk over float32 -mean errors, as published

    def max_trials(self, T: int) -> int:
        return max(self.n_samples) * self.n_trials


def paired_t_pvalues(values: torch.Tensor, best: int) -> torch.Tensor:
    """One-sided paired t-test p-values that each row's mean exceeds row `best`'s (values: (m, n) trials).

    d_k = values[i, k] - values[best, k]; t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of freedom.
    A row identical to the best one gets p = 1; a constant positive difference gets p = 0.
    """
    from scipy.special import stdtr  # Student's t CDF; scipy comes with scikit-learn, imported late (slow)

    d = (values - values[best]).double()
    n = d.shape[1]
    mean, sd = d.mean(1), d.std(1) if n > 1 else torch.zeros(len(d), dtype=torch.float64)
    stat = torch.where(sd > 0, mean / (sd / n**0.5), torch.where(mean > 0, torch.inf, -torch.inf))
    return torch.from_numpy(stdtr(max(n - 1, 1), -stat.numpy()))


@lru_cache(maxsize=64)
def _racing_trials(n_grid: int, T: int, order: str, cap: int, antithetic: bool) -> tuple[Trial, ...]:
    ts = ordered_grid(even_grid(n_grid, T), order)  # master_grid when n_grid divides T, even otherwise
    return tuple(Trial(ts[i // 2] if antithetic else ts[i], i) for i in range(cap))


@dataclass(frozen=True)
class Racing(Planned):
    """Sequential paired elimination ("racing"), after Clark & Jaini 2023 (paired t-test, p < 2e-3).

    Rounds of round_trials trials are shared by all remaining candidates; from min_trials on, after each
    round a candidate is dropped when a one-sided paired t-test says its (weighted) error exceeds the
    current best's at level alpha. It stops when one candidate remains, or after cap trials, where the
    lowest mean wins. Trial i uses noise i and the i-th timestep of a stratified order of an even grid
    of max(grid, cap) points (timesteps.even_grid; SPEC.md's master grid for 500 points), so any prefix
    spreads over [0, T) and a lower cap stops the same race earlier. antithetic: trials 2k and 2k+1
    share a timestep and use eps_k and -eps_k (the NoiseBank must be antithetic too; the pipeline
    arranges that), and the test sees each complete pair's mean as one observation.
    alpha is per comparison and per look (no correction for repeated looks): see docs/efficiency.md.
    """

    alpha: float = 0.002
    cap: int = 500
    round_trials: int = 5
    min_trials: int = 10
    order: str = "stratified"
    antithetic: bool = False
    grid: int = 500  # timesteps come from this grid (or a cap-point one): a lower cap truncates the same race

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise UserInputError(f"--alpha must lie between 0 and 1, got {self.alpha}")
        if self.cap < 1 or self.round_trials < 1 or self.min_trials < 2:
            raise UserInputError("--max-trials and the round size must be positive, min_trials at least 2")
        if self.order not in ORDERS:
            raise UserInputError(f"unknown timestep order {self.order!r}; choose one of {', '.join(ORDERS)}")

    def trials(self, T: int) -> tuple[Trial, ...]:
        """Trial i: the i-th timestep of the ordered grid (each twice when antithetic), noise i."""
        n_t = -(-self.cap // 2) if self.antithetic else self.cap
        n_grid = min(max(self.grid, n_t), T)
        if n_t > T:
            raise UserInputError(f"--max-trials {self.cap} exceeds the model's {T} timesteps")
        return _racing_trials(n_grid, T, self.order, self.cap, self.antithetic)

    def plan(self, ledger: ErrorLedger, T: int) -> Steps:
        trials = self.trials(T)
        remaining = list(range(ledger.n_candidates))
        done = 0
        while done < len(trials) and (len(remaining) > 1 or done == 0):
            step = trials[done : done + self.round_trials]
            yield from ledger.ask(remaining, step)
            done += len(step)
            if done >= self.min_trials and len(remaining) > 1:
                values = torch.stack([ledger.trial_values(c) for c in remaining])
                if self.antithetic:  # a pair (eps, -eps) is one observation: its two errors are dependent
                    values = values[:, : done // 2 * 2].reshape(len(remaining), -1, 2).mean(2)
                best = int(values.mean(1).argmin())
                keep = paired_t_pvalues(values, best) >= self.alpha
                remaining = [c for c, k in zip(remaining, keep.tolist()) if k]
        ledger.keep(remaining, 1)  # one left, or the cap reached: the lowest mean wins

    def max_trials(self, T: int) -> int:
        return self.cap

    def worst_case_calls(self, n_candidates: int, T: int) -> int:
        """Calls when nothing is ever dropped: every candidate on every trial up to the cap."""
        return n_candidates * self.cap if n_candidates > 1 else min(self.round_trials, self.cap)


# --- the schedule codec: one JSON form for run configs and model configs, older forms read ---------------

#: The schedule classes a JSON form can name ({"kind": NAME, ...}).
SCHEDULE_KINDS: dict[str, type] = {"Full": Full, "Staged": Staged, "Racing": Racing}


def schedule_to_dict(schedule: Schedule, loss: Loss | None = None) -> dict[str, Any]:
    """A schedule as JSON: {"kind": its class name, **its fields} (+ "loss" when given).

    A schedule class of the user's own (not in SCHEDULE_KINDS) is recorded by its repr: readable, not rebuilt.
    """
    if dataclasses.is_dataclass(schedule) and type(schedule) in SCHEDULE_KINDS.values():
        fields = {f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule)}
    else:
        fields = {"repr": repr(schedule)}
    out = {"kind": type(schedule).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}
    return out if loss is None else {**out, "loss": loss}


def schedule_from_dict(spec: Mapping[str, Any], where: str = "the schedule") -> tuple[Schedule, Loss | None]:
    """A schedule from its JSON form, and the loss the form names (None when it names none).

    Forms: {"kind": "Staged", "n_samples": [...], ...} (schedule_to_dict's), and the older forms of model
    configs: {"name": NAME, "params": {...}} (a named schedule with some fields replaced; its loss unless
    "loss" is given) and {"timesteps": [...]} (Full).
    """
    if not isinstance(spec, Mapping):
        raise UserInputError(f"{where} must be a JSON object, got {spec!r:.40}")
    fields = {k: v for k, v in spec.items() if k not in ("kind", "name", "params", "loss")}
    loss = spec.get("loss")
    if loss is not None and loss not in get_args(Loss):
        raise UserInputError(f"{where}: unknown loss {loss!r}; choose one of {', '.join(get_args(Loss))}")
    if "name" in spec:
        sched, named_loss = get_schedule(spec["name"])
        return _build(type(sched), {**_as_fields(sched), **dict(spec.get("params") or {})}, where), loss or named_loss
    kind = spec.get("kind", "Full" if "timesteps" in spec else None)
    if kind not in SCHEDULE_KINDS:
        raise UserInputError(f"{where}: unknown schedule kind {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    return _build(SCHEDULE_KINDS[kind], fields, where), loss


def _as_fields(schedule: Schedule) -> dict[str, Any]:
    return {f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule)}


def _build(cls: type, fields: Mapping[str, Any], where: str) -> Schedule:
    """cls(**fields) with JSON lists as tuples; an unknown or missing field is one clear line."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise UserInputError(f"{where}: {cls.__name__} has no field {unknown[0]!r} (fields: {', '.join(names)})")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except TypeError as exc:  # a required field is missing
        raise UserInputError(f"{where}: {exc}") from None


#: The published per-dataset schedules and losses (SPEC.md §2): dataset name -> (schedule, loss), from the
#: dataset registry (data/registry.py), the one place that holds them.
PUBLISHED: dict[str, tuple[Staged, Loss]] = {
    name: schedule_from_dict(DATASETS[name].schedule, f"the {name} registry entry")  # type: ignore[misc]
    for name in published_schedule_names()
}

#: The published DiT-XL/2 protocol (SPEC.md §3; eval_prob_dit.py --t_interval 4 --randomize_noise): every class
#: on the 250 timesteps range(2, 1000, 4), the i-th timestep with noise i, l2. DiT models' default schedule.
DIT_SCHEDULE: tuple[Full, Loss] = (Full(interval_grid(4)), "l2")

#: What runs when no schedule is named: the CIFAR-10 stages with the method's default l2 loss.
DEFAULT_SCHEDULE: tuple[Staged, Loss] = (Staged((50, 500), (5, 1)), "l2")


def count_calls(schedule: Schedule, n_candidates: int, T: int = 1000) -> int:
    """Model calls the schedule spends on n_candidates tied candidates (exact for fixed schedules)."""
    if hasattr(schedule, "worst_case_calls"):  # adaptive schedules: the replay would be slow and says the same
        return schedule.worst_case_calls(n_candidates, T)
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


def parse_timesteps(spec: str, T: int | None = 1000) -> tuple[int, ...]:
    """'11,311,611' or 'start:stop:step' ranges (Python semantics), comma-separated, in that order.

    T None: the model is not known yet (config.check_schedule checks the range once it is)."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            if ":" in part:
                out.extend(range(*(int(x) for x in part.split(":"))))
            elif part.strip():
                out.append(int(part))
    except (TypeError, ValueError):
        raise UserInputError(f"bad --timesteps {spec!r}: use '11,311,611' or a range such as '0:1000:50'") from None
    check_timesteps(out, T if T is not None else max(out, default=0) + 1)
    return tuple(out)


def check_timesteps(timesteps, T: int) -> None:
    if not timesteps:
        raise UserInputError("no timesteps to evaluate")
    bad = [t for t in timesteps if not 0 <= t < T]
    if bad:
        raise UserInputError(f"timestep {bad[0]} is outside the model's range 0..{T - 1}")


SCHEDULES: dict[str, tuple[Schedule, Loss]] = {
    "default": DEFAULT_SCHEDULE,
    **PUBLISHED,
    "dit": DIT_SCHEDULE,
    "racing": (Racing(), "l2"),
}

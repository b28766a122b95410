"""Every registered schedule passes the same checks on the analytic Gaussian model (models/gaussian.py): the model
calls it makes are the calls count_calls announces, the calls the result reports and the trials its ledger holds;
every candidate sees a prefix of the winner's trials; no trial needs noise beyond max_trials; the
winner has the lowest mean error among the candidates that saw the most trials. The schedule codec's round trip
over the same schedules is in tests/test_engine.py."""

from __future__ import annotations

import pytest
import torch

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.bench.throughput import DATASET_CLASSES
from diffusion_classifier.core.schedules import (
    SCHEDULE_KINDS,
    Full,
    Racing,
    Staged,
    count_calls,
    get_schedule,
    schedule_names,
)
from diffusion_classifier.models.gaussian import GaussianClassModel

#: One schedule of each kind with fields away from their defaults (two trials per timestep, antithetic pairs, ...).
KIND_CASES = {
    "Full": Full((5, 500, 995, 500)),  # a repeated timestep is a trial of its own (noise i for the i-th)
    "Staged": Staged((2, 6, 12), (4, 2, 1), n_trials=2),
    "Racing": Racing(cap=40, round_trials=4, min_trials=8, antithetic=True, order="golden", grid=50),
}
#: name -> (schedule, candidates): every named schedule at its dataset's class count (10 where it has none), and
#: each kind's case at 5 candidates.
CASES = {
    **{name: (get_schedule(name)[0], DATASET_CLASSES.get(name, 10)) for name in schedule_names()},
    **{kind: (schedule, 5) for kind, schedule in KIND_CASES.items()},
}


class CountingGaussian(GaussianClassModel):
    """The Gaussian class model that counts the rows its noise predictor is asked for."""

    rows = 0

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.rows += len(x_t)
        return super().predict_noise(x_t, t, cond)


def classify(schedule, n: int, tied: bool):
    """One sample classified among n Gaussian classes (all with one mean when tied): (result, model rows).

    The noise is a table of max_trials rows (half as many eps for antithetic pairs): a trial beyond it fails."""
    g = torch.Generator().manual_seed(n)
    means = torch.zeros(n, 1, 2, 2) if tied else 2 * torch.randn(n, 1, 2, 2, generator=g)
    model = CountingGaussian(means, std=0.5)
    x0 = model.sample(torch.tensor([n // 2]), generator=g)[0]
    n_eps = schedule.max_trials(1000)
    noise = torch.randn(-(-n_eps // 2) if getattr(schedule, "antithetic", False) else n_eps, 1, 2, 2, generator=g)
    result = DiffusionClassifier(model)(x0, schedule=schedule, noise=noise, batch_size=4096)
    return result, model.rows


def test_every_schedule_kind_has_a_case():
    assert set(KIND_CASES) == set(SCHEDULE_KINDS)
    assert all(type(s).__name__ == kind for kind, s in KIND_CASES.items())


@pytest.mark.parametrize("name", sorted(name for name, (schedule, _) in CASES.items() if isinstance(schedule, Racing)))
def test_tied_candidates_cost_exactly_what_count_calls_announces(name):
    """All classes share one mean, so every candidate errs alike on every trial: nothing is ever dropped early,
    and the calls are count_calls' worst case (a fixed schedule's calls do not depend on the errors: the test
    below holds them to count_calls)."""
    schedule, n = CASES[name]
    result, rows = classify(schedule, n, tied=True)
    assert rows == result.calls == count_calls(schedule, n) == sum(len(e["values"]) for e in result.errors.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_trials_are_shared_bounded_and_decide_by_the_lowest_mean(name):
    schedule, n = CASES[name]
    result, rows = classify(schedule, n, tied=False)
    counts = {k: len(e["values"]) for k, e in result.errors.items()}  # each candidate's trials in the ledger
    assert rows == result.calls == sum(counts.values())
    if isinstance(schedule, Racing):  # separated classes: the race drops some before the cap
        assert result.calls < count_calls(schedule, n)
    else:  # a fixed schedule's calls do not depend on the errors
        assert result.calls == count_calls(schedule, n)
    winner = result.errors[result.prediction]["timesteps"]
    most = max(counts.values())
    assert len(winner) == most <= schedule.max_trials(1000)
    for e in result.errors.values():
        assert e["timesteps"] == winner[: len(e["timesteps"])]  # the same (t, eps) trials, in the same order
    finalists = {k: sum(e["values"]) / most for k, e in result.errors.items() if counts[k] == most}
    assert result.prediction == min(finalists, key=finalists.get)


@pytest.mark.parametrize("kind", sorted(KIND_CASES))
def test_one_candidate_costs_what_count_calls_announces(kind):
    schedule = KIND_CASES[kind]
    result, rows = classify(schedule, 1, tied=True)
    assert rows == result.calls == count_calls(schedule, 1) > 0 and result.prediction == "0"

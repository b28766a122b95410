"""The estimator and schedules on the analytic Gaussian model: exact arithmetic, Bayes decisions, shared noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_classifier import (
    PUBLISHED,
    DiffusionClassifier,
    ErrorLedger,
    Full,
    NoiseBank,
    Staged,
    Trial,
    count_calls,
)
from diffusion_classifier.core.estimator import Pair, model_error_fn, per_sample_loss
from diffusion_classifier.core.schedules import get_schedule, master_grid, parse_timesteps, stage_grid
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.models.gaussian import GaussianClassModel


def gaussian(k: int = 10, dim: int = 8, spread: float = 0.6, seed: int = 0) -> GaussianClassModel:
    g = torch.Generator().manual_seed(seed)
    return GaussianClassModel(spread * torch.randn(k, 1, dim, 1, generator=g), std=1.0)


def test_cifar10_first_stage_grid_and_calls():
    grid = master_grid(500)
    assert stage_grid(grid, 50) == list(range(11, 1000, 20))
    assert count_calls(PUBLISHED["cifar10"][0], 10) == 2750


@pytest.mark.parametrize(
    "name,classes,calls",
    [
        ("cifar10", 10, 2750),
        ("stl10", 10, 3000),
        ("pets", 37, 2050),
        ("flowers", 102, 5590),
        ("food", 101, 5570),
        ("aircraft", 100, 5550),
        ("imagenet", 1000, 124500),
        ("objectnet", 113, 14400),
    ],
)
def test_published_schedules_cost_what_the_paper_code_computes(name, classes, calls):
    assert count_calls(PUBLISHED[name][0], classes) == calls


def test_staged_noise_index_counts_across_stages_and_skips_repeated_timesteps():
    ledger = ErrorLedger(lambda pairs: torch.tensor([float(p.candidate) for p in pairs]), 4)
    Staged((2, 4), (2, 1)).run(ledger, 1000)
    # master grid for max n = 4: 125, 375, 625, 875; stage 1 takes indices 1, 3 -> 375, 875
    assert ledger.trials[3] == [(375, 0), (875, 1)]
    # candidates 0 and 1 survive (lowest errors) and see only the two new timesteps, noise 2 and 3
    assert ledger.trials[0] == [(375, 0), (875, 1), (125, 2), (625, 3)]
    assert ledger.ranking()[0] == 0 and ledger.calls == 4 * 2 + 2 * 2


def test_staged_keeps_the_lowest_mean_over_all_trials_so_far():
    # candidate 1 is best in stage 1 but worst afterwards: the final pick uses all trials
    table = {0: [1.0, 1.0, 1.0, 1.0], 1: [0.0, 0.0, 9.0, 9.0], 2: [5.0, 5.0, 5.0, 5.0]}
    ledger = ErrorLedger(lambda pairs: torch.tensor([table[p.candidate][p.trial.noise_index] for p in pairs]), 3)
    Staged((2, 4), (2, 1)).run(ledger, 1000)
    assert ledger.ranking() == [0, 1, 2]


def test_losses():
    eps, pred = torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 2.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert per_sample_loss(eps, pred, "l2").tolist() == [0.25, 4.0]
    assert per_sample_loss(eps, pred, "l1").tolist() == [0.5, 2.0]
    assert per_sample_loss(eps, pred, "huber").tolist() == [0.125, 1.5]
    with pytest.raises(UserInputError):
        per_sample_loss(eps, pred, "l3")


def test_errors_do_not_depend_on_batch_size():
    model = gaussian()
    x0 = model.sample(torch.tensor([3]))[0]
    cond = model.condition(model.class_names)
    pairs = [Pair(c, Trial(t, i)) for c in range(10) for i, t in enumerate(range(5, 1000, 40))]
    noise = NoiseBank(model.latent_shape, seed=1)
    a = model_error_fn(model, x0, cond, noise, batch_size=1)(pairs)
    b = model_error_fn(model, x0, cond, noise, batch_size=64)(pairs)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


def test_seeded_noise_is_reproducible_and_independent_of_access_order():
    a = NoiseBank((4, 8, 8), seed=42)[[0, 1, 200, 3]]
    bank = NoiseBank((4, 8, 8), seed=42)
    b = torch.cat([bank[[200]], bank[[3]], bank[[0, 1]]])[[2, 3, 0, 1]]
    assert torch.equal(a, b)
    assert not torch.equal(a, NoiseBank((4, 8, 8), seed=43)[[0, 1, 200, 3]])


def test_noise_file_npy_and_pt(tmp_path):
    table = torch.randn(6, 1, 8, 1)
    np.save(tmp_path / "n.npy", table.numpy())
    torch.save(table, tmp_path / "n.pt")
    for name in ("n.npy", "n.pt"):
        bank = NoiseBank.from_file(tmp_path / name, (1, 8, 1))
        assert torch.equal(bank[[4, 0]], table[[4, 0]])
        with pytest.raises(UserInputError, match="holds 6 trials"):
            bank[[6]]
    with pytest.raises(UserInputError, match="shape"):
        NoiseBank.from_file(tmp_path / "n.npy", (4, 8, 8))


def test_enough_shared_trials_give_the_bayes_decision():
    model = gaussian(k=5, dim=16, spread=0.5)
    clf = DiffusionClassifier(model)
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 5, (30,), generator=g)
    x0s = model.sample(labels, generator=g)
    sched = Full(tuple(range(1, 1000, 4)))
    agree = [clf(x, schedule=sched, seed=3, batch_size=512).prediction == str(model.bayes_decision(x)) for x in x0s]
    assert sum(agree) >= 29


def independent(p: Pair) -> Pair:
    """The same trial with noise of its own per candidate: no pairing across candidates."""
    return Pair(p.candidate, p.trial._replace(noise_index=p.trial.noise_index + 10_000 * p.candidate))


def _bayes_agreement(model, x0s, n_trials: int, shared: bool) -> float:
    correct = 0
    for i, x0 in enumerate(x0s):
        noise = NoiseBank(model.latent_shape, seed=i)
        base = model_error_fn(model, x0, model.condition(model.class_names), noise, batch_size=4096)
        # independent noise: each candidate draws its own eps (offset noise indices), as without pairing
        error_fn = base if shared else (lambda ps, base=base: base([independent(p) for p in ps]))
        ledger = ErrorLedger(error_fn, len(model.class_names))
        ts = np.linspace(50, 950, n_trials).round().astype(int)
        ledger.evaluate(range(ledger.n_candidates), [Trial(int(t), j) for j, t in enumerate(ts)])
        correct += ledger.ranking()[0] == model.bayes_decision(x0)
    return correct / len(x0s)


def test_shared_noise_needs_far_fewer_trials_than_independent_noise():
    model = gaussian(k=4, dim=64, spread=0.25, seed=1)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (40,), generator=g)
    x0s = model.sample(labels, generator=g)
    shared_10 = _bayes_agreement(model, x0s, 10, shared=True)
    independent_10 = _bayes_agreement(model, x0s, 10, shared=False)
    independent_160 = _bayes_agreement(model, x0s, 160, shared=False)
    assert shared_10 >= 0.9
    assert independent_10 < shared_10 - 0.2
    assert independent_160 < shared_10  # sixteen times the trials still do not catch up


def test_parse_timesteps_and_unknown_schedule():
    assert parse_timesteps("11,311,611") == (11, 311, 611)
    assert parse_timesteps("0:1000:250,999") == (0, 250, 500, 750, 999)
    for bad in ("a,b", "0:2000:500", ""):
        with pytest.raises(UserInputError):
            parse_timesteps(bad)
    with pytest.raises(UserInputError, match="cifar10"):
        get_schedule("cifar11")

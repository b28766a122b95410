"""Racing (sequential paired elimination), timestep orders, antithetic noise and timestep weighting."""

from __future__ import annotations

import argparse

import pytest
import torch
from scipy import stats

from diffusion_classifier import DiffusionClassifier, ErrorLedger, NoiseBank, Trial, UserInputError
from diffusion_classifier.cli.options import (
    add_image_options,
    add_schedule_options,
    classifier_config_from_args,
    efficiency_kwargs,
    racing_from_args,
    schedule_from_args,
)
from diffusion_classifier.config import resolve_schedule
from diffusion_classifier.core.estimator import per_sample_loss, q_sample
from diffusion_classifier.core.schedules import (
    DEFAULT_SCHEDULE,
    SCHEDULES,
    Full,
    Racing,
    count_calls,
    master_grid,
    paired_t_pvalues,
)
from diffusion_classifier.core.timesteps import ORDERS, even_grid, ordered_grid, van_der_corput_order
from diffusion_classifier.core.weighting import TimestepWeights, exp_weights, fit_weights, weight_table
from diffusion_classifier.models.gaussian import GaussianClassModel


@pytest.mark.parametrize("name", list(ORDERS))
def test_every_order_is_a_permutation(name):
    assert sorted(ORDERS[name](500)) == list(range(500))


def test_stratified_prefixes_cover_the_range_evenly():
    order = van_der_corput_order(512)
    for j in range(1, 10):  # each prefix of 2^j positions puts one point in each of 2^j equal strata
        strata = sorted(p * 2**j // 512 for p in order[: 2**j])
        assert strata == list(range(2**j))
    ts = ordered_grid(master_grid(500), "stratified")
    for n in (8, 16, 50, 100):  # on the 500-point grid the largest hole stays near T / n
        cuts = sorted(ts[:n]) + [1000 + min(ts[:n])]
        assert max(b - a for a, b in zip(cuts, cuts[1:])) <= 2 * 1000 / n
    ascending = ordered_grid(master_grid(500), "ascending")[:16]
    assert max(ascending) < 100  # the reference order covers only the low-noise end early


def test_paired_t_pvalues_match_scipy():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(4, 30, generator=g) + torch.tensor([0.0, 0.1, 0.5, 0.0])[:, None]
    p = paired_t_pvalues(values, best=0)
    for i in (1, 2, 3):
        ref = stats.ttest_rel(values[i].numpy(), values[0].numpy(), alternative="greater").pvalue
        assert p[i] == pytest.approx(ref, rel=1e-4)  # scipy works in float32 here
    assert p[0] == 1.0  # the best against itself is never dropped


def synthetic_fn(offsets: list[float], sd: float = 1.0, shared_sd: float = 5.0):
    """Errors = a large per-trial term shared by all candidates + candidate offset + small own noise."""

    def errors(pairs):
        out = []
        for p in pairs:
            shared = torch.Generator().manual_seed(p.trial.noise_index)
            own = torch.Generator().manual_seed(10_000 * (p.candidate + 1) + p.trial.noise_index)
            out.append(
                shared_sd * torch.randn(1, generator=shared) + offsets[p.candidate] + sd * torch.randn(1, generator=own)
            )
        return torch.cat(out)

    return errors


def test_racing_drops_clearly_worse_candidates_early_and_keeps_the_best():
    ledger = ErrorLedger(synthetic_fn([0.0, 3.0, 3.0, 3.0]), 4)
    Racing(cap=200).run(ledger, 1000)
    assert ledger.ranking()[0] == 0
    # at the first look (min_trials = 10) the worse ones fail the paired test and the race stops
    assert ledger.calls == 4 * 10
    assert all(len(ledger.errors[c]) == 10 for c in (1, 2, 3))


def test_racing_runs_to_the_cap_on_ties_and_the_lowest_mean_wins():
    sched = Racing(cap=60, round_trials=6)
    for n in (1, 2, 5):  # zero errors: nothing is ever significant, so the replay costs the worst case
        tied = ErrorLedger(lambda pairs: torch.zeros(len(pairs)), n)
        sched.run(tied, 1000)
        assert tied.calls == count_calls(sched, n) == (n * 60 if n > 1 else 6)
    ledger = ErrorLedger(synthetic_fn([0.02, 0.0], sd=1.0), 2)
    Racing(cap=60, alpha=1e-9).run(ledger, 1000)
    means = ledger.mean_errors()
    assert ledger.calls == 2 * 60
    assert ledger.ranking()[0] == int(means.argmin())


def test_racing_trials_use_noise_i_and_the_stratified_order():
    trials = Racing(cap=500).trials(1000)
    assert [tr.noise_index for tr in trials] == list(range(500))
    assert [tr.t for tr in trials] == ordered_grid(master_grid(500), "stratified")
    assert Racing(cap=100).trials(1000) == trials[:100]  # a lower cap stops the same race earlier
    wide = sorted(tr.t for tr in Racing(cap=800).trials(1000))  # an even grid of 800 points over [0, 1000)
    assert wide[0] == 0 and wide[-1] == 999 and max(b - a for a, b in zip(wide, wide[1:])) == 2
    for n in (100, 250, 500):
        assert even_grid(n) == master_grid(n)  # the reference grid wherever n divides T
    anti = Racing(cap=10, antithetic=True).trials(1000)
    assert [tr.t for tr in anti[::2]] == [tr.t for tr in anti[1::2]]
    assert [tr.noise_index for tr in anti] == list(range(10))


def test_racing_rejects_bad_settings():
    for kw in ({"alpha": 0}, {"alpha": 1.5}, {"cap": 0}, {"order": "sideways"}, {"min_trials": 1}):
        with pytest.raises(UserInputError):
            Racing(**kw)
    with pytest.raises(UserInputError):
        Racing(cap=2000).trials(1000)


def gaussian(seed: int = 0, scale: float = 0.4) -> GaussianClassModel:
    g = torch.Generator().manual_seed(seed)
    return GaussianClassModel(torch.randn(10, 1, 8, 8, generator=g) * scale)


def test_racing_is_registered_and_agrees_with_full_using_fewer_calls():
    assert "racing" in SCHEDULES and SCHEDULES["racing"][1] == "l2"
    model = gaussian()
    clf = DiffusionClassifier(model)
    g = torch.Generator().manual_seed(5)
    xs = model.sample(torch.arange(8) % 10, g)
    full = Full(tuple(ordered_grid(master_grid(500), "stratified")))
    for x in xs:
        raced = clf(x, schedule="racing")
        ref = clf(x, schedule=full)
        assert raced.prediction == ref.prediction
        assert raced.calls < ref.calls / 3
        # racing's trials are a prefix of full's: the same noise gives the same errors
        n = len(raced.errors["0"]["values"])
        assert raced.errors["0"]["values"] == pytest.approx(ref.errors["0"]["values"][:n])


def test_antithetic_noise_bank_and_pipeline_use_minus_eps():
    bank = NoiseBank((1, 4, 4), seed=3, antithetic=True)
    plain = NoiseBank((1, 4, 4), seed=3)
    torch.testing.assert_close(
        bank[[0, 1, 4, 5]], torch.stack([plain[[0]][0], -plain[[0]][0], plain[[2]][0], -plain[[2]][0]])
    )
    model = gaussian()
    x0 = model.sample(torch.tensor([2]), torch.Generator().manual_seed(0))[0]
    res = DiffusionClassifier(model)(x0, schedule=Racing(cap=20, antithetic=True, alpha=1e-12))
    t = res.errors["2"]["timesteps"][1]
    eps = -NoiseBank(model.latent_shape, seed=0)[[0]]  # trial 1 is the antithetic partner of trial 0
    x_t = q_sample(x0, eps, model.alphas_cumprod[[t]])
    expected = per_sample_loss(eps, model.predict_noise(x_t, torch.tensor([t]), torch.tensor([2])))
    assert res.errors["2"]["values"][1] == pytest.approx(float(expected), rel=1e-5)


def test_weighted_mean_is_applied_in_the_ledger_only():
    w = exp_weights(1000)
    ledger = ErrorLedger(lambda pairs: torch.tensor([float(p.trial.t) for p in pairs]), 2, weights=w)
    trials = [Trial(100, 0), Trial(500, 1), Trial(900, 2)]
    ledger.evaluate([0, 1], trials)
    ts = torch.tensor([100.0, 500.0, 900.0], dtype=torch.float64)
    ww = w[[100, 500, 900]]
    assert float(ledger.mean_errors()[0]) == pytest.approx(float((ww * ts).sum() / ww.sum()))
    assert ledger.errors[0] == [100.0, 500.0, 900.0]  # the raw errors stay as measured
    assert float(ledger.trial_values(0).mean()) == pytest.approx(float(ledger.mean_errors()[0]))
    flat = ErrorLedger(ledger.error_fn, 2, weights=torch.ones(1000, dtype=torch.float64))
    flat.evaluate([0, 1], trials)
    assert float(flat.mean_errors()[0]) == pytest.approx(500.0)


def test_weights_json_round_trip_and_errors(tmp_path):
    tw = TimestepWeights((0, 500, 1000), (0.25, 1.0))
    tw.save(tmp_path / "w.json")
    table = weight_table(str(tmp_path / "w.json"), 1000)
    assert table.shape == (1000,) and table[499] == 0.25 and table[500] == 1.0
    assert weight_table("uniform", 1000) is None
    with pytest.raises(UserInputError):
        weight_table(str(tmp_path / "w.json"), 500)  # covers 0..1000, the model has 500 steps
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserInputError):
        TimestepWeights.load(tmp_path / "bad.json")
    with pytest.raises(UserInputError):
        weight_table("quadratic", 1000)


def test_fit_weights_prefers_the_timesteps_that_separate_labels():
    g = torch.Generator().manual_seed(0)
    N, K, n = 30, 3, 200
    ts = torch.tensor(ordered_grid(master_grid(n), "stratified"))
    labels = torch.arange(N) % K
    errors = torch.randn(N, K, n, generator=g)
    signal = (ts >= 500).float()  # only the noisier half tells the true label apart
    errors += 1.0 * signal  # every label's error rises there ...
    errors[torch.arange(N), labels] -= 0.8 * signal  # ... the true label's less
    fitted = fit_weights(errors, labels, ts, 1000, n_bins=4)
    assert min(fitted.values[2:]) > 5 * max(fitted.values[:2])


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_schedule_options(p)
    add_image_options(p)
    return p.parse_args(argv)


def racing_of(argv: list[str], default=None) -> Racing:
    """The schedule the CLI runs for these flags, the model's default schedule being `default`."""
    args = parse(argv)
    return resolve_schedule(schedule_from_args(args), args.loss, default or DEFAULT_SCHEDULE, racing_from_args(args))[0]


def test_cli_options_build_racing_and_reject_mixtures(tmp_path):
    assert racing_of(["--alpha", "0.01", "--max-trials", "100"]) == Racing(alpha=0.01, cap=100)
    assert racing_of(["--schedule", "racing", "--antithetic"]) == Racing(antithetic=True)
    # an override keeps the default's other racing fields; a named schedule is taken as named
    assert racing_of(["--max-trials", "100"], (Racing(alpha=0.01), "l2")) == Racing(alpha=0.01, cap=100)
    assert racing_of(["--schedule", "racing", "--max-trials", "9"], (Racing(alpha=0.01), "l2")) == Racing(cap=9)
    assert schedule_from_args(parse(["--schedule", "racing"])) == "racing"
    with pytest.raises(UserInputError):
        schedule_from_args(parse(["--alpha", "0.01", "--timesteps", "1,2"]))
    with pytest.raises(UserInputError):
        schedule_from_args(parse(["--schedule", "cifar10", "--max-trials", "50"]))
    assert efficiency_kwargs(parse(["--timestep-weighting", "exp"]))["weights"] == "exp"
    with pytest.raises(UserInputError):
        efficiency_kwargs(parse(["--weights", str(tmp_path / "missing.json")]))
    with pytest.raises(UserInputError, match="temperature"):
        classifier_config_from_args(parse(["--temperature", "-1"]))  # the config checks it, before any model

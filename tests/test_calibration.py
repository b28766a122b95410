"""Probabilities from the ELBO scale, temperature fitting, ECE, and the probability in the result."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_classifier import DiffusionClassifier, UserInputError
from diffusion_classifier.core.calibration import (
    elbo_scale,
    expected_calibration_error,
    fit_temperature,
    nll,
    probabilities,
)
from diffusion_classifier.models.gaussian import GaussianClassModel


def test_elbo_scale_and_probabilities():
    assert elbo_scale((1, 28, 28), 1000) == 1000 * 784 / 2
    e = torch.tensor([[0.10, 0.11, float("inf")]])
    p = probabilities(e, scale=100.0)
    assert p.sum() == pytest.approx(1.0)
    assert p[0, 0] / p[0, 1] == pytest.approx(math.exp(1.0))  # 100 * 0.01 nats apart
    assert p[0, 2] == 0.0
    assert probabilities(e, 100.0, temperature=2.0)[0, 0] < p[0, 0]  # a higher temperature flattens
    with pytest.raises(UserInputError):
        probabilities(e, 100.0, temperature=0.0)


def test_fit_temperature_recovers_the_generating_temperature():
    g = torch.Generator().manual_seed(0)
    N, K, scale, true_tau = 4000, 5, 1000.0, 8.0
    errors = 0.01 * torch.rand(N, K, generator=g, dtype=torch.float64)
    p = probabilities(errors, scale, true_tau)
    labels = torch.multinomial(p.float(), 1, generator=g)[:, 0]
    tau = fit_temperature(errors, labels, scale)
    assert tau == pytest.approx(true_tau, rel=0.15)
    assert nll(errors, labels, scale, tau) <= nll(errors, labels, scale, 1.0)
    assert nll(errors, labels, scale, tau) <= nll(errors, labels, scale, 100.0)


def test_fit_temperature_is_determined_when_every_image_is_right():
    g = torch.Generator().manual_seed(3)
    errors = 0.01 + 0.01 * torch.rand(40, 5, generator=g, dtype=torch.float64)
    labels = torch.arange(40) % 5
    errors[torch.arange(40), labels] = 0.0  # the true label always wins by 0.01 or more
    tau = fit_temperature(errors, labels, scale=1000.0)
    conf = probabilities(errors, 1000.0, tau).max(-1).values.mean()
    # the Laplace-smoothed targets ask for about 1 - 1/42 confidence, not certainty
    assert 0.9 < conf < 0.995 and 1e-3 < tau < 1e9


def test_ece_by_hand_and_on_calibrated_samples():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 0, 0])
    # bin 0.9: confidence 0.9, accuracy 0.5; bin 0.6: confidence 0.6, accuracy 1.0
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(3 * torch.randn(20000, 4, generator=g), -1)
    drawn = torch.multinomial(p, 1, generator=g)[:, 0]
    assert expected_calibration_error(p, drawn) < 0.02  # labels drawn from p: calibrated
    sharp = torch.softmax(30 * torch.log(p), -1)
    assert expected_calibration_error(sharp, drawn) > 0.05  # the same ranking, overconfident


def test_result_scores_carry_probabilities():
    g = torch.Generator().manual_seed(0)
    model = GaussianClassModel(torch.randn(4, 1, 8, 8, generator=g) * 0.4)
    clf = DiffusionClassifier(model)
    x0 = model.sample(torch.tensor([1]), g)[0]
    for schedule in ("racing", "default"):
        res = clf(x0, schedule=schedule, temperature=50.0)
        probs = [s["probability"] for s in res.scores]
        assert sum(probs) == pytest.approx(1.0)
        assert probs[0] == max(probs) and res.scores[0]["label"] == res.prediction
        assert "score" in res.scores[0]
    sharp = clf(x0, schedule="racing")  # temperature 1: the variational bound itself, far sharper
    assert sharp.scores[0]["probability"] > res.scores[0]["probability"]
    with pytest.raises(UserInputError):
        clf(x0, schedule="racing", temperature=-1.0)


def test_calibrate_writes_weights_that_classify_reads(tmp_path):
    import json

    from diffusion_classifier.core.weighting import weight_table
    from diffusion_classifier.reporting.fitting import calibrate, calibration_schedule

    g = torch.Generator().manual_seed(2)
    model = GaussianClassModel(torch.randn(4, 1, 8, 8, generator=g) * 0.4)
    clf = DiffusionClassifier(model)
    y = torch.arange(8) % 4
    xs = list(model.sample(y, g))
    labels = model.class_names
    cal = calibrate(clf, xs, labels, [labels[i] for i in y], n_trials=40, n_bins=4)
    assert (cal.n_images, cal.n_trials, len(cal.weights.values)) == (8, 40, 4)
    # the uniform temperature is the NLL fit on the errors the classifier gives on the calibration trials
    trials = calibration_schedule(40, 1000)
    err = torch.tensor([[clf(x, schedule=trials).errors[k]["values"] for k in labels] for x in xs], dtype=torch.float64)
    scale = elbo_scale(model.latent_shape, 1000)
    assert cal.temperature_uniform == pytest.approx(fit_temperature(err.mean(2), y, scale), rel=1e-6)
    cal.save(tmp_path / "cal.json")
    assert json.loads((tmp_path / "cal.json").read_text())["temperature"] == pytest.approx(cal.temperature)
    table = weight_table(str(tmp_path / "cal.json"), 1000)
    assert table[0] == pytest.approx(cal.weights.values[0]) and table[999] == pytest.approx(cal.weights.values[-1])
    res = clf(xs[0], schedule="racing", weights=str(tmp_path / "cal.json"), temperature=cal.temperature)
    winner = res.errors[res.prediction]
    e, w = torch.tensor(winner["values"]), table[winner["timesteps"]]
    weighted, plain = float((e * w).sum() / w.sum()), float(e.mean())
    assert res.scores[0]["score"] == pytest.approx(-weighted, rel=1e-5) and weighted != pytest.approx(plain, rel=1e-3)
    with pytest.raises(UserInputError):
        calibrate(clf, xs[:2], labels, ["7", "0"])

"""Class probabilities from mean errors (the ELBO scale), temperature fitting, expected calibration error.

DDPM's variational bound gives log p(x|c) >= -sum_t lambda_t E||eps - eps_theta(x_t, t, c)||^2 + C, with
the sum over the T timesteps and the squared norm over the d latent elements. With the "simple" weights
lambda_t = 1/2 and the per-element mean error e = E_t[mse_t], log p(x|c) ~ -(T d / 2) e + C, so with
equal priors p(c|x) = softmax_c(-(T d / 2) e_c / tau). tau = 1 is the bound itself; a temperature tau fitted
on labelled images by minimising the negative log-likelihood absorbs the true lambda_t, the timestep
weighting and Monte-Carlo noise (docs/efficiency.md).
"""

from __future__ import annotations

import logging
import math

import torch

from ..errors import UserInputError

log = logging.getLogger(__name__)


def elbo_scale(latent_shape: tuple[int, ...], T: int) -> float:
    """T d / 2: the factor between the mean per-element error and the variational bound on -log p(x|c)."""
    return T * math.prod(latent_shape) / 2


def probabilities(mean_errors: torch.Tensor, scale: float, temperature: float = 1.0) -> torch.Tensor:
    """p(c|x) = softmax_c(-scale * e_c / temperature) over the last dimension (inf errors get p = 0)."""
    check_temperature(temperature)
    return torch.softmax(-mean_errors.double() * (scale / temperature), dim=-1)


def nll(
    mean_errors: torch.Tensor, labels: torch.Tensor, scale: float, temperature: float, smoothing: float = 0.0
) -> float:
    """Mean negative log-likelihood of the true labels: mean_errors (N, K), labels (N,).

    smoothing eps moves eps of each target's mass evenly onto all K labels (label smoothing).
    """
    logp = torch.log_softmax(-mean_errors.double() * (scale / temperature), dim=-1)
    true = -logp[torch.arange(len(labels)), labels].mean()
    if not smoothing:
        return float(true)
    spread = logp.masked_fill(~torch.isfinite(logp), 0.0).mean()  # labels never evaluated carry no mass
    return float((1 - smoothing) * true - smoothing * spread)


def fit_temperature(
    mean_errors: torch.Tensor, labels: torch.Tensor, scale: float, bounds: tuple[float, float] = (1e-3, 1e9)
) -> float:
    """The temperature minimising the NLL on labelled images (a 1-D search over log tau).

    When every image is classified right, the plain NLL keeps falling as tau shrinks and tau is not
    determined; the targets are therefore smoothed by the Laplace estimate of an error rate, 1 / (N + 2),
    which matters little once the images include mistakes.
    """
    from scipy.optimize import minimize_scalar

    eps = 1.0 / (len(labels) + 2)
    res = minimize_scalar(
        lambda log_tau: nll(mean_errors, labels, scale, math.exp(log_tau), smoothing=eps),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    tau = float(math.exp(res.x))
    if tau < bounds[0] * 1.01:
        log.warning("temperature hit its lower bound %.3g: use more (or harder) labelled images", bounds[0])
    return tau


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE: sum over confidence bins of |accuracy - mean confidence| weighted by the bin's share."""
    conf, pred = probs.max(-1)
    correct = (pred == labels).double()
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)  # equal-width bins over [0, 1]
    ece = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            ece += float(inside.double().mean() * (correct[inside].mean() - conf[inside].double().mean()).abs())
    return ece


def check_temperature(temperature: float) -> float:
    if not temperature > 0 or math.isinf(temperature):
        raise UserInputError(f"--temperature must be a positive number, got {temperature}")
    return temperature

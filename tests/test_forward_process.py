"""Forward processes: the exact outputs of each parameterisation give back eps (and v), on every timestep index."""

from __future__ import annotations

import pytest
import torch

from diffusion_classifier.core.forward_process import DDPMProcess, RectifiedFlow
from diffusion_classifier.models.gaussian import scaled_linear_alphas_cumprod

T = 1000


@pytest.fixture
def trial():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(6, 4, 5, 5, generator=g), torch.randn(6, 4, 5, 5, generator=g)
    return x0, eps, torch.tensor([0, 1, 250, 500, 998, 999])


def test_ddpm_v_prediction_of_the_true_v_is_eps(trial):
    x0, eps, t = trial
    process = DDPMProcess(scaled_linear_alphas_cumprod(), "v_prediction")
    a = process.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = process.q_sample(x0, eps, t)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # Salimans & Ho's v
    torch.testing.assert_close(process.prediction(v, x_t, t), eps, rtol=1e-5, atol=1e-5)
    assert process.parameterization == "v_prediction" and process.num_train_timesteps == T


def test_flow_sigma_grid_and_eps_from_the_true_velocity(trial):
    x0, eps, t = trial
    flow = RectifiedFlow(T)
    sigma = flow.sigma(t)
    assert sigma[0] == 1 / T and sigma[-1] == 1.0 and flow.model_timestep(t)[3] == pytest.approx(501.0)
    x_t = flow.q_sample(x0, eps, t)
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * eps)
    v = eps - x0  # the rectified-flow target
    torch.testing.assert_close(flow.prediction(v, x_t, t), eps, rtol=1e-5, atol=1e-5)
    assert flow.target(x0, eps) is eps


def test_flow_velocity_error_compares_v_with_eps_minus_x0(trial):
    x0, eps, t = trial
    flow = RectifiedFlow(T, error="velocity")
    v = torch.randn_like(x0)
    assert flow.prediction(v, flow.q_sample(x0, eps, t), t) is v
    torch.testing.assert_close(flow.target(x0, eps), eps - x0)
    # away from sigma = 1, the velocity error is the eps error over (1 - sigma)
    eps_flow = RectifiedFlow(T)
    x_t = eps_flow.q_sample(x0, eps, t)
    e_eps = (eps_flow.prediction(v, x_t, t) - eps).flatten(1).abs().mean(1)
    e_v = (v - (eps - x0)).flatten(1).abs().mean(1)
    torch.testing.assert_close(e_eps[:-1], e_v[:-1] * (1 - flow.sigma(t[:-1])), rtol=1e-4, atol=1e-6)

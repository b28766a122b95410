"""Forward processes: how a model family noises x0 at timestep index t, and what its per-trial error compares.

Notation: t in {0, ..., T-1} is a timestep index (schedules only ever see these), x0 the clean latent,
eps ~ N(0, I) the trial noise, x_t the noised latent the denoiser gets, and out its raw output.

- DDPM (Ho et al. 2020), "epsilon" or "v_prediction": x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with
  a_t = alpha_bar[t]; a v output becomes eps = sqrt(a_t) v + sqrt(1 - a_t) x_t (Salimans & Ho 2022).
- Rectified flow (Esser et al. 2024, SD3), "flow": sigma = (t + 1) / T on the linear grid (no shift),
  x_t = (1 - sigma) x0 + sigma eps, the network gets timestep sigma * T and predicts v = eps - x0;
  eps_hat = x_t + (1 - sigma) v, so every family's error is on the same eps scale. The velocity error
  (error="velocity") compares v with v_target = eps - x0 instead.

The per-trial error is loss(target(x0, eps), prediction(out, x_t, t)). Tensors only: no model library here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

Parameterization = Literal["epsilon", "v_prediction", "flow"]
FlowError = Literal["eps", "velocity"]
FLOW_ERRORS: tuple[str, ...] = ("eps", "velocity")


def q_sample(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, with alpha_bar_t of shape (B,)."""
    a = alpha_bar_t.view(-1, *([1] * (eps.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor shaped to broadcast over the rows of like (B, ...)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True, eq=False)
class DDPMProcess:
    """The variance-preserving process of a beta schedule; the network predicts eps or v.

    coefficients: (sqrt(alpha_bar), sqrt(1 - alpha_bar)) as float32 tables computed in float64, as ADM/DiT's
    GaussianDiffusion computes them (ddpm_from_float64); None computes them in float32 from alphas_cumprod, as
    the Stable Diffusion scripts do.
    """

    alphas_cumprod: torch.Tensor  # alpha_bar[t], t = 0..T-1, float32
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    coefficients: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def parameterization(self) -> Parameterization:
        return self.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def to(self, device: torch.device | str) -> DDPMProcess:
        coefficients = None if self.coefficients is None else tuple(c.to(device) for c in self.coefficients)
        return replace(self, alphas_cumprod=self.alphas_cumprod.to(device), coefficients=coefficients)

    def q_sample(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.coefficients is None:
            return q_sample(x0, eps, self.alphas_cumprod[t])
        sqrt_a, sqrt_1m_a = (per_row(c[t], eps) for c in self.coefficients)
        return sqrt_a * x0 + sqrt_1m_a * eps

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def prediction(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat from the network output (v is converted in float32)."""
        if self.prediction_type != "v_prediction":
            return out
        a = per_row(self.alphas_cumprod.to(out.device)[t], out)
        return a.sqrt() * out.float() + (1 - a).sqrt() * x_t.float()

    def target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return eps


def ddpm_from_float64(alphas_cumprod: torch.Tensor) -> DDPMProcess:
    """The eps-prediction process of a float64 alpha_bar with float64-computed coefficient tables (ADM / DiT's
    GaussianDiffusion: sqrt_alphas_cumprod in numpy float64, cast to float32 when gathered)."""
    a = alphas_cumprod.double().cpu()
    return DDPMProcess(a.float(), coefficients=(a.sqrt().float(), (1.0 - a).sqrt().float()))


@dataclass(frozen=True, eq=False)
class RectifiedFlow:
    """The rectified-flow process of SD3 / FLUX on the linear sigma grid sigma = (t + 1) / T."""

    num_train_timesteps: int = 1000
    error: FlowError = "eps"

    @property
    def parameterization(self) -> Parameterization:
        return "flow"

    def to(self, device: torch.device | str) -> RectifiedFlow:
        return self

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = (t + 1) / T, float32: t = 0 is the least noise, t = T - 1 pure noise."""
        return (t.float() + 1) / self.num_train_timesteps

    def q_sample(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = per_row(self.sigma(t), eps)
        return (1 - s) * x0 + s * eps

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """What the transformer is given: sigma * T (diffusers' FlowMatchEulerDiscreteScheduler timesteps)."""
        return self.sigma(t) * self.num_train_timesteps

    def prediction(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat = x_t + (1 - sigma) v in float32; the velocity error keeps v itself."""
        if self.error == "velocity":
            return out
        s = per_row(self.sigma(t).to(out.device), out)
        return x_t.float() + (1 - s) * out.float()

    def target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return eps - x0 if self.error == "velocity" else eps


ForwardProcess = DDPMProcess | RectifiedFlow

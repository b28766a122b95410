"""The small interface every model family implements for the estimator (one adapter per family)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..core.forward_process import DDPMProcess, ForwardProcess
from ..data.images import DEFAULT_OPTIONS, ImageOptions, load_image

if TYPE_CHECKING:
    from ..core.estimator import Loss
    from ..core.schedules import Schedule


class DiffusionAdapter(ABC):
    """What the estimator needs from a conditional diffusion model.

    Notation: x0 is the clean (latent) sample, t in {0, ..., T-1} a timestep index, and the model's
    forward_process (core/forward_process.py) forms x_t from (x0, eps, t) and says what the error compares:
    loss(forward_process.target(x0, eps), predict_noise(x_t, t, c)). For a DDPM model trained with the eps
    objective, x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps and predict_noise returns
    eps_theta(x_t, t, c). Every family quirk (VAE scaling, text encoding, learned sigma, class ids,
    v or flow outputs converted to eps) stays inside the adapter.
    """

    #: "text": conditions are prompts; "class": conditions are class names of the model.
    conditioning: Literal["text", "class"] = "text"
    #: Class names a class-conditional model carries (None for text models).
    class_names: list[str] | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    #: The attribute holding the network predict_noise calls, which the fast path (fast.py) casts and compiles.
    denoiser_attr: str | None = None
    #: The model's own protocol (DiT's published one, a bundled model's tuned race): the schedule and loss
    #: that run when none is named. None: the dataset's published schedule, else schedules.DEFAULT_SCHEDULE
    #: (config.default_schedule is the one place that decides).
    default_schedule: tuple[Schedule, Loss] | None = None
    #: Divides the probabilities' ELBO-scaled logits when no temperature is given (1: the bound itself).
    default_temperature: float = 1.0
    #: Rows per model call when the caller leaves the batch size to the model (None: 32); the fast path sets its own.
    batch_size: int | None = None
    #: The fewest rows a model call gets (up to its batch size; padding repeats the last row, dropped after): on
    #: the CPU, matmul kernels take another path below 16 rows, whose results differ by about 1e-6 relative; from
    #: 16 rows on, each row's output is bitwise the same whatever the batch size and the other rows (measured with
    #: 1 and 2 threads on the bundled UNet and a tiny SD). A model whose rows never interact sets 1.
    min_call_rows: int = 16

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar[t] for t = 0..T-1, float32 on the CPU (DDPM families; a flow model has none)."""
        raise NotImplementedError(f"{type(self).__name__} is not a DDPM model: it has no alpha_bar")

    @cached_property
    def forward_process(self) -> ForwardProcess:
        """How x_t is formed and what the error compares; DDPM on alphas_cumprod with eps outputs unless overridden."""
        return DDPMProcess(self.alphas_cumprod)

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape (C, h, w) of one x0, which is also the shape of one trial's eps."""

    @abstractmethod
    def encode(self, image: Any) -> torch.Tensor:
        """x0 for one input image (a PIL image for image models), float32, shape latent_shape."""

    @abstractmethod
    def condition(self, conditions: list[str]) -> torch.Tensor:
        """One row per condition (prompt embeddings, or class ids); rows are gathered per model call."""

    @abstractmethod
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t, c) for a batch: x_t (B, C, h, w), t (B,) long, cond (B, ...).

        Precisely: forward_process.prediction of the network's output, the quantity the error compares with
        forward_process.target (eps_hat for every family, v for a flow model asked for the velocity error).
        """

    @property
    def num_train_timesteps(self) -> int:
        return self.forward_process.num_train_timesteps

    def safe(self) -> DiffusionAdapter | None:
        """The same model in a numerically safe mode (float32, eager) to redo overflowed errors; None: no fallback."""
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-able description of the model, recorded beside results."""
        return {"adapter": type(self).__name__}

    # ---- devices, dtypes and inputs ----------------------------------------------------------------------

    #: FastConfig fields this model pins on the fast path (fast.py), e.g. DiT's official float32 arithmetic.
    fast_overrides: Mapping[str, Any] = MappingProxyType({})
    #: Networks (names in networks()) that stay float32 whatever the dtype (a VAE that overflows in float16).
    float32_networks: frozenset[str] = frozenset()

    def networks(self) -> dict[str, torch.nn.Module]:
        """The torch networks this adapter runs, by name (to() moves them); none for an analytic model."""
        return {}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiffusionAdapter:
        """This adapter with its networks on device and cast to dtype (float32_networks keep float32); self."""
        device = self.device if device is None else torch.device(device)
        for name, net in self.networks().items():
            cast = dtype if dtype is not None and name not in self.float32_networks else None
            net.to(device=device, dtype=cast)
        self.device, self.dtype = device, dtype or self.dtype
        return self

    def open_image(self, source: Any, options: ImageOptions = DEFAULT_OPTIONS) -> Any:
        """What encode takes, from what a caller gives (a path, bytes, a PIL image): an image model's PIL image."""
        return load_image(source, options)

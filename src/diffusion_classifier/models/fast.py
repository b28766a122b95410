"""The fast inference path: a half-precision, channels_last, compiled copy of an adapter's denoiser, static shapes.

FastModel wraps any adapter whose denoiser network it can find (DiffusionAdapter.denoiser_attr):

1. the network is copied, cast to float16 (or bfloat16) and, for conv networks, stored channels_last;
   attention stays on diffusers' default SDPA processor; TF32 is allowed for what float32 matmuls remain;
2. it is compiled with torch.compile, static shapes (dynamic=False): every call is padded to a fixed
   batch shape (the next power of two, at least 8, at most the batch size), so a run compiles a handful of
   graphs once; padding rows repeat a real row and are dropped, so no error changes;
3. a call that runs out of memory halves the batch size and goes on (the size is then kept);
4. the original adapter stays as it was: safe() returns it (float32, eager; a float32 copy when it was loaded
   in half precision), and the estimator redoes with it every pair whose half-precision error overflowed.

On by default on CUDA only (resolve_fast): on the CPU half precision is slow and compiling takes minutes.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ..core.forward_process import ForwardProcess
from ..data.images import DEFAULT_OPTIONS, ImageOptions
from ..errors import UserInputError
from ..names import COMPILE_MODES
from .base import DiffusionAdapter

log = logging.getLogger(__name__)

FAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class FastConfig:
    """How the fast path runs a denoiser; for_device gives the defaults of a device."""

    dtype: str = "float16"  # fp16 has 3 more mantissa bits than bf16; its rare overflows are redone in fp32
    compile: bool = True
    compile_mode: str = "default"  # "reduce-overhead" adds CUDA graphs; "max-autotune*" tune longer (minutes)
    channels_last: bool | None = None  # None: for conv networks (UNets), not for transformers
    tf32: bool = True
    batch_size: int = 256  # the automatic batch size's start; halved on out-of-memory
    min_bucket: int = 8  # the smallest padded batch shape: fewer graphs, little waste

    def __post_init__(self) -> None:
        if self.dtype not in FAST_DTYPES:
            raise UserInputError(f"unknown fast dtype {self.dtype!r}; choose one of {', '.join(FAST_DTYPES)}")
        if self.compile_mode not in COMPILE_MODES:
            raise UserInputError(
                f"unknown compile mode {self.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}"
            )
        if self.batch_size < 1 or self.min_bucket < 1:
            raise UserInputError(f"the fast path's batch size must be at least 1, got {self.batch_size}")

    @classmethod
    def for_device(cls, device: torch.device | str, **overrides: Any) -> FastConfig:
        """CUDA: fp16, compiled, batch 256. Elsewhere: float32 eager, batch 32 (the same errors as the plain path)."""
        if torch.device(device).type == "cuda":
            return cls(**overrides)
        return replace(cls(dtype="float32", compile=False, tf32=False, batch_size=32), **overrides)


def resolve_fast(fast: bool | None, device: torch.device | str) -> bool:
    """fast None means "on where it is safe": on CUDA, off elsewhere."""
    return torch.device(device).type == "cuda" if fast is None else bool(fast)


def bucket(n: int, limit: int, smallest: int = 8) -> int:
    """The static batch shape n rows are padded to: the next power of two (at least smallest), at most limit."""
    return min(limit, max(smallest, 1 << (n - 1).bit_length()))


def find_denoiser(model: DiffusionAdapter) -> str:
    """The attribute of model that holds its denoiser network (its denoiser_attr)."""
    if model.denoiser_attr is not None and isinstance(getattr(model, model.denoiser_attr), torch.nn.Module):
        return model.denoiser_attr
    raise UserInputError(f"{type(model).__name__} has no denoiser network the fast path can optimise; use --no-fast")


def is_conv_network(net: torch.nn.Module, at_least: int = 4) -> bool:
    """UNets are mostly convolutions (channels_last helps); a DiT has one patch-embedding conv (it does not)."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) >= at_least


def optimize_network(net: torch.nn.Module, config: FastConfig, channels_last: bool) -> torch.nn.Module:
    """A cast (and maybe channels_last, compiled) copy of net; net itself is left unchanged."""
    fast = copy.deepcopy(net)
    dtype = FAST_DTYPES[config.dtype]
    if (
        getattr(next(fast.parameters(), None), "dtype", dtype) != dtype
    ):  # diffusers warns on every to(dtype), even a no-op one
        fast = fast.to(dtype=dtype)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if config.compile:
        # dynamic=False: one graph per padded batch shape, specialised to it (see bucket)
        fast.compile(mode=config.compile_mode, dynamic=False)
    return fast


def attention_processors(net: torch.nn.Module) -> list[str]:
    """The attention processor classes of a diffusers network (AttnProcessor2_0 is SDPA)."""
    procs = getattr(net, "attn_processors", None) or {}
    return sorted({type(p).__name__ for p in procs.values()})


class FastModel(DiffusionAdapter):
    """An adapter whose predict_noise runs a fast copy of the wrapped adapter's denoiser; all else is delegated."""

    def __init__(self, model: DiffusionAdapter, config: FastConfig | None = None):
        self.inner = model  # left as loaded: the reference and the safe fallback
        # an adapter may pin settings its published arithmetic needs (DiT: float32, no TF32)
        self.config = config or FastConfig.for_device(model.device, **model.fast_overrides)
        attr = find_denoiser(model)
        net = getattr(model, attr)
        self.channels_last = (
            self.config.channels_last if self.config.channels_last is not None else is_conv_network(net)
        )
        self.fast = copy.copy(model)  # shares the VAE and text encoder; only the denoiser differs
        setattr(self.fast, attr, optimize_network(net, self.config, self.channels_last))
        self.fast.dtype = FAST_DTYPES[self.config.dtype]
        self.conditioning, self.class_names = model.conditioning, model.class_names
        self.device, self.dtype = model.device, self.fast.dtype
        self.batch_size = self.config.batch_size
        self.attention = attention_processors(net)
        self.uses_cudagraphs = self.config.compile and self.config.compile_mode in ("reduce-overhead", "max-autotune")
        self._safe: DiffusionAdapter | None = None
        if self.config.tf32 and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def __getattr__(self, name: str) -> Any:
        # what FastModel does not define (default_schedule, image_size, name, ...) is the wrapped adapter's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.inner.alphas_cumprod

    @property
    def default_schedule(self):  # DiffusionAdapter's class default would hide the wrapped adapter's own
        return self.inner.default_schedule

    @property
    def default_temperature(self) -> float:
        return self.inner.default_temperature

    @property
    def min_call_rows(self) -> int:
        return self.inner.min_call_rows

    @property
    def forward_process(self) -> ForwardProcess:
        return self.inner.forward_process

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.inner.latent_shape

    def open_image(self, source: Any, options: ImageOptions = DEFAULT_OPTIONS) -> Any:
        return self.inner.open_image(source, options)

    def encode(self, image: Any) -> torch.Tensor:
        return self.inner.encode(image)

    def condition(self, conditions: list[str]) -> torch.Tensor:
        return self.inner.condition(conditions)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """eps_theta for any number of rows: static-shaped calls of at most batch_size rows, halving on OOM."""
        outs, start = [], 0
        while start < len(x_t):
            n = min(self.batch_size, len(x_t) - start)
            rows = slice(start, start + n)
            try:
                outs.append(self._static_call(x_t[rows], t[rows], cond[rows]))
            except torch.cuda.OutOfMemoryError:
                self._back_off()
                continue
            start += n
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @torch.inference_mode()
    def _static_call(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One call of the fast network, padded to its bucket's batch shape by repeating the last row."""
        n = len(x_t)
        # inference tensors only: a normal tensor has other dispatch keys, which the compiled graph's guards
        # check, so it would compile a second graph for the same shape
        x_t, t, cond = (v if v.is_inference() else v.clone() for v in (x_t, t, cond))
        pad = bucket(n, max(self.batch_size, n), self.config.min_bucket) - n
        if pad:
            x_t, t, cond = (torch.cat([v, v[-1:].expand(pad, *v.shape[1:])]) for v in (x_t, t, cond))
        x_t = x_t.to(self.dtype)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        if cond.is_floating_point():
            cond = cond.to(self.dtype)
        if self.uses_cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the graphs may reuse their output buffers
        out = self.fast.predict_noise(x_t, t, cond)[:n]
        return out.clone() if self.uses_cudagraphs else out  # a graph's output is overwritten by its next replay

    def _back_off(self) -> None:
        if self.batch_size <= 1:
            raise torch.cuda.OutOfMemoryError("out of memory at batch size 1")
        self.batch_size //= 2
        log.warning("out of memory: the fast path's batch size is now %d", self.batch_size)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def safe(self) -> DiffusionAdapter:
        """The wrapped adapter, eager, in float32: as loaded, or an upcast copy when it was loaded in half precision."""
        if self._safe is None:
            if self.inner.dtype == torch.float32:
                self._safe = self.inner
            else:  # a FastModel that only casts: float32 weights and inputs, eager, no channels_last
                upcast = FastConfig(dtype="float32", compile=False, channels_last=False, tf32=False, min_bucket=1)
                self._safe = FastModel(self.inner, replace(upcast, batch_size=self.batch_size))
        return self._safe

    def describe(self) -> dict[str, Any]:
        fast = {**asdict(self.config), "channels_last": self.channels_last, "batch_size": self.batch_size}
        return {**self.inner.describe(), "fast": {**fast, "attention": self.attention}}


def apply_fast(model: DiffusionAdapter, fast: bool | None = None, config: FastConfig | None = None) -> DiffusionAdapter:
    """model behind the fast path when fast (None: on CUDA only), else model unchanged."""
    if not resolve_fast(fast, model.device) or isinstance(model, FastModel):
        return model
    return FastModel(model, config)

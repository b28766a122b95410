"""Throughput of model calls: calls per second, seconds per image on a schedule, achieved TFLOP/s, fast vs reference.

One row per setting: "reference" runs the denoiser eager at batch 32 (float16 on CUDA, float32 elsewhere);
"fast" is fast.FastModel at its own batch size. A call is one (candidate, trial) row, as count_calls counts
them. Warm-up calls (compilation included) are not timed; CUDA is synchronised before the clock is read.
The fast path's errors are also compared with float32 eager ones on a few random latents (agreement()).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..core.estimator import Pair, Trial, model_error_fn
from ..core.noise import NoiseBank
from ..core.schedules import Racing, count_calls, get_schedule, master_grid
from ..data.registry import DATASETS, published_schedule_names
from ..errors import UserInputError
from ..models.base import DiffusionAdapter
from ..models.fast import FastConfig, FastModel
from .flops import flops_per_call

#: Classes of each published schedule's dataset (the registry's): the labels an image is classified among.
DATASET_CLASSES: dict[str, int] = {
    **{name: DATASETS[name].classes for name in published_schedule_names()},
    "dit": 1000,  # DiT-XL/2 on ImageNet
}
REFERENCE_BATCH = 32  # the reference code's batch size


@dataclass
class Row:
    """One setting's measurement."""

    name: str
    dtype: str
    batch_size: int
    compile: str  # "eager" or the torch.compile mode
    calls_per_s: float
    tflops: float
    seconds_per_image: float


@dataclass
class Agreement:
    """Fast-path errors against float32 eager ones on the same (latent, label, t, eps)."""

    images: int
    labels: int
    trials: int
    max_rel_error: float  # over the finite fast errors
    predictions_agree: int  # images whose lowest-error label is the same (after the float32 redo of overflows)
    overflowed: int  # fast errors that were NaN or inf (the estimator redoes these in float32)


@dataclass
class BenchResult:
    device: str
    model: dict[str, Any]
    schedule: str
    n_labels: int
    calls_per_image: int
    flops_per_call: int
    rows: list[Row] = field(default_factory=list)
    speedup: float = 0.0  # fast calls/s over reference calls/s
    agreement: Agreement | None = None
    #: every schedule asked for: {"labels", "calls_per_image", "seconds_per_image": {row name: s}}
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()  # inference tensors, as the estimator's: the compiled graphs' guards tell them apart
def random_inputs(model: DiffusionAdapter, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n rows of (x_t, t, cond) of the model's shapes: x_t ~ N(0, I), t uniform, conditions cycled over 10 labels."""
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(n, *model.latent_shape, generator=g).to(model.device)
    t = torch.randint(0, model.num_train_timesteps, (n,), generator=g).to(model.device)
    cond = model.condition(bench_labels(model, 10))
    return x_t, t, cond[torch.arange(n, device=cond.device) % len(cond)]


def bench_labels(model: DiffusionAdapter, n: int) -> list[str]:
    """n candidate conditions the model accepts: class names, or prompts."""
    if model.conditioning == "class":
        return list((model.class_names or [])[:n])
    return [f"a photo of a class {i}." for i in range(n)]


@torch.inference_mode()
def calls_per_second(model: DiffusionAdapter, inputs: tuple, iters: int = 10) -> float:
    """Rows per second of iters calls of model.predict_noise on inputs (warm it up first)."""
    synchronize(model.device)
    began = time.perf_counter()
    for _ in range(iters):
        model.predict_noise(*inputs)
    synchronize(model.device)
    return iters * len(inputs[0]) / (time.perf_counter() - began)


@torch.inference_mode()
def warm_up(model: DiffusionAdapter, inputs: tuple, calls: int) -> None:
    """Untimed calls: compilation, autotuning, allocator growth and out-of-memory back-off happen here."""
    for _ in range(calls):
        model.predict_noise(*inputs)
    synchronize(model.device)


@contextlib.contextmanager
def float32_matmuls():
    """Full float32 matmuls (TF32 off) inside: the float32 eager errors the fast path is compared with."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def agreement(reference: DiffusionAdapter, fast: FastModel, images: int = 4, labels: int = 8) -> Agreement:
    """Errors of fast and of reference (float32 eager) on random latents, labels x trials each, l2 loss.

    trials = fast.batch_size // labels, so every image is one call of the fast path's timed batch shape
    (no new compilation); the timesteps are the reference master grid of that many points.
    """
    labels = min(labels, fast.batch_size)
    n_trials = max(1, fast.batch_size // labels)
    trials = [Trial(t, i) for i, t in enumerate(master_grid(n_trials, reference.num_train_timesteps))]
    pairs = [Pair(c, tr) for c in range(labels) for tr in trials]
    cond = reference.condition(bench_labels(reference, labels))
    noise = NoiseBank(reference.latent_shape, seed=0)
    g = torch.Generator().manual_seed(1)
    max_rel, agree, overflowed = 0.0, 0, 0
    for _ in range(images):
        x0 = torch.randn(*reference.latent_shape, generator=g)
        with float32_matmuls():
            ref = model_error_fn(reference, x0, cond, noise, batch_size=REFERENCE_BATCH)(pairs).view(labels, -1)
        out = model_error_fn(Unsafe(fast), x0, cond, noise, batch_size=fast.batch_size)(pairs).view(labels, -1)
        ok = out.isfinite()
        overflowed += int((~ok).sum())
        if ok.any():
            max_rel = max(max_rel, float(((out - ref).abs() / ref.abs())[ok].max()))
        out = torch.where(ok, out, ref)  # what the estimator's float32 redo gives
        agree += int(out.mean(1).argmin() == ref.mean(1).argmin())
    return Agreement(images, labels, n_trials, max_rel, agree, overflowed)


class Unsafe:
    """A model's errors as its calls give them: no float32 redo (safe() is None), so overflows can be counted."""

    def __init__(self, model: DiffusionAdapter):
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def safe(self) -> None:
        return None


def schedule_calls(schedule: str, n_labels: int | None) -> tuple[int, int]:
    """(labels, model calls per image) of a named schedule; labels default to its dataset's classes (else 10).

    For racing the count is an upper bound: it assumes no label is ever dropped (all tied).
    """
    sched, _ = get_schedule(schedule)
    n = n_labels or DATASET_CLASSES.get(schedule, 10)
    if n < 1:
        raise UserInputError(f"--labels must be at least 1, got {n}")
    return n, count_calls(sched, n)


def bench(
    model: DiffusionAdapter,
    fast_config: FastConfig | None = None,
    schedules: Sequence[str] = ("cifar10",),
    n_labels: int | None = None,
    calls_per_image: int | None = None,
    warmup: int = 3,
    iters: int = 10,
    repeats: int = 3,
    check: bool = True,
) -> BenchResult:
    """Reference and fast rows for model (loaded in float32), their ratio, and the fast path's agreement.

    Seconds per image are given for every schedule; the rows' seconds_per_image are the first one's.
    """
    counts = {name: schedule_calls(name, n_labels) for name in schedules}
    schedule, (n, counted) = next(iter(counts.items()))
    per_image = calls_per_image or counted
    cuda = model.device.type == "cuda"
    reference_config = FastConfig(
        dtype="float16" if cuda else "float32", compile=False, channels_last=False, tf32=False, min_bucket=1
    )
    fast_config = fast_config or FastConfig.for_device(model.device)
    flops = flops_per_call(model, *random_inputs(model, 1))
    result = BenchResult(device_name(model.device), model.describe(), schedule, n, per_image, flops)
    configs = {"reference": replace(reference_config, batch_size=REFERENCE_BATCH), "fast": fast_config}
    settings = {name: FastModel(model, config) for name, config in configs.items()}
    inputs = {name: random_inputs(m, m.batch_size) for name, m in settings.items()}
    for name, m in settings.items():
        warm_up(m, inputs[name], warmup)
    rates = dict.fromkeys(settings, 0.0)
    for _ in range(repeats):  # interleaved, best of repeats: load from elsewhere slows both alike, then neither
        for name, m in settings.items():
            rates[name] = max(rates[name], calls_per_second(m, inputs[name], iters))
    for name, m in settings.items():
        config, rate = configs[name], rates[name]
        mode = config.compile_mode if config.compile else "eager"
        result.rows.append(Row(name, config.dtype, m.batch_size, mode, rate, flops * rate / 1e12, per_image / rate))
    if check:
        result.agreement = agreement(model, settings["fast"])
    result.speedup = result.rows[1].calls_per_s / result.rows[0].calls_per_s
    for name, (labels, calls) in counts.items():
        calls = per_image if name == schedule else calls
        seconds = {r.name: calls / r.calls_per_s for r in result.rows}
        exact = name == schedule and calls_per_image is not None or not isinstance(get_schedule(name)[0], Racing)
        result.schedules[name] = {
            "labels": labels,
            "calls_per_image": calls,
            "exact": exact,  # racing's count assumes every label ties (no label dropped): an upper bound
            "seconds_per_image": seconds,
        }
    return result

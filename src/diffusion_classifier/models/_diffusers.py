"""What the diffusers families share: DiffusersModel (a text-to-image pipeline behind the adapter interface: loading,
own weights, VAE latents, prompt batches, describe, sizes, registration), folder detection, load errors, learned sigma,
and condition rows that carry prompt embeddings with a vector (pooled embeddings, a mask)."""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F

from ..core.forward_process import FLOW_ERRORS, DDPMProcess, FlowError, ForwardProcess, RectifiedFlow
from ..data.images import reference_transform
from ..errors import UserInputError
from . import Family, register_family
from .base import DiffusionAdapter


def pipeline_class(path: Path) -> str:
    """The _class_name of a diffusers pipeline folder's model_index.json ("" when there is none)."""
    try:
        return str(json.loads((path / "model_index.json").read_text()).get("_class_name", ""))
    except (json.JSONDecodeError, OSError):
        return ""


def load_failed(what: str, path: Path | str, exc: Exception) -> UserInputError:
    """A one-line error for a model that would not load: the library's first line says why."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return UserInputError(f"cannot load {what} from {path}: {first}")


# ---- latents and outputs ----------------------------------------------------------------------------------


@torch.inference_mode()
def vae_latent(vae: Any, pixels: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """x0 of one preprocessed image (3, H, W) in [-1, 1]: (VAE posterior mean - shift_factor) x scaling_factor.

    shift=False leaves shift_factor out (families whose pipelines decode with the scaling factor alone).
    """
    mean, cfg = vae.encode(pixels[None].to(vae.device, vae.dtype)).latent_dist.mean, vae.config
    if shift:
        mean = mean - (cfg.shift_factor or 0.0)
    return (mean * cfg.scaling_factor)[0].float()


def split_learned_sigma(out: torch.Tensor, channels: int) -> torch.Tensor:
    """The eps half of a learned-sigma output (B, 2C, h, w); an eps-only output (B, C, h, w) is returned as is."""
    return torch.split(out, channels, dim=1)[0]


# ---- condition rows: prompt embeddings (L, D) and a pooled embedding (P,) in one tensor -------------------


def pack_pooled(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(B, L, D) and (B, P) -> (B, L + ceil(P / D), D): pooled, zero-padded, in extra rows after the prompt's.

    One tensor per condition lets the estimator gather, pad and cast condition rows as for any text model.
    """
    B, _, D = embeds.shape
    k = math.ceil(pooled.shape[1] / D)
    extra = F.pad(pooled, (0, k * D - pooled.shape[1])).view(B, k, D)
    return torch.cat([embeds, extra.to(embeds.dtype)], dim=1)


def unpack_pooled(rows: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of pack_pooled: (prompt embeddings (B, L, D), pooled (B, P))."""
    k = math.ceil(pooled_dim / rows.shape[-1])
    return rows[:, :-k], rows[:, -k:].flatten(1)[:, :pooled_dim]


# ---- your own weights ------------------------------------------------------------------------------------


def load_denoiser(cls: Any, spec: str | Path, subfolder: str, dtype: torch.dtype) -> torch.nn.Module:
    """A fine-tuned denoiser (--unet / --transformer): a model folder, a pipeline folder holding subfolder/,
    or a hub id (its top level, else its subfolder/)."""
    path = Path(spec).expanduser()
    kw: dict[str, Any] = {"torch_dtype": dtype}
    if path.is_dir():
        sub = subfolder if (path / subfolder / "config.json").is_file() else None
        source: str | Path = path
    elif str(spec).count("/") == 1 and not str(spec).startswith((".", "/", "~")):
        sub, source = None, str(spec)
    else:
        raise UserInputError(f"--{subfolder} {spec}: no such folder; give a model folder or a hub id")
    try:
        return cls.from_pretrained(source, subfolder=sub, **kw)
    except (OSError, ValueError) as first:
        if path.is_dir():
            raise load_failed(f"a {cls.__name__}", spec, first) from None
        try:  # a hub pipeline repo keeps the denoiser in its subfolder
            return cls.from_pretrained(source, subfolder=subfolder, **kw)
        except (OSError, ValueError) as exc:
            raise load_failed(f"a {cls.__name__}", spec, exc) from None


def own_weights(denoiser: tuple[str, str | None], lora: str | None, lora_scale: float) -> dict[str, str]:
    """What replaced or changed the published weights (--unet/--transformer, --lora), recorded beside results."""
    record = {denoiser[0]: str(denoiser[1])} if denoiser[1] is not None else {}
    if lora is not None:
        record.update(lora=str(lora), lora_scale=str(lora_scale))
    return record


def apply_lora(pipe: Any, lora: str | Path, scale: float = 1.0) -> None:
    """Fuse a LoRA (a folder, a .safetensors file or a hub id) into the pipeline's denoiser and text encoders.

    diffusers' load_lora_weights + fuse_lora(lora_scale) + unload_lora_weights: the fused weights stay, the
    LoRA layers go, so the denoiser runs (and compiles) as a plain network with no per-call LoRA cost.
    """
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise UserInputError("--lora needs the peft package: pip install peft")
    path = Path(lora).expanduser()
    source, kw = (str(path.parent), {"weight_name": path.name}) if path.is_file() else (str(lora), {})
    try:
        pipe.load_lora_weights(source, adapter_name="lora", **kw)
    except (OSError, ValueError, KeyError) as exc:
        raise load_failed("LoRA weights", lora, exc) from None
    # every module the pipeline loads LoRA layers into (FLUX's fuse_lora would fuse its transformer's only)
    pipe.fuse_lora(components=list(pipe._lora_loadable_modules), lora_scale=scale, adapter_names=["lora"])
    pipe.unload_lora_weights()


# ---- forward processes from a pipeline's scheduler config -------------------------------------------------


def ddpm_process(scheduler_config: Any) -> DDPMProcess:
    """alpha_bar and prediction_type of a pipeline's scheduler config (PNDM, Euler, DPM-Solver: the same betas)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler_config)
    return DDPMProcess(scheduler.alphas_cumprod.float().cpu(), scheduler.config.prediction_type)


# ---- a diffusers text-to-image pipeline behind the adapter interface --------------------------------------


class DiffusersModel(DiffusionAdapter):
    """What SD, SDXL, SD3, PixArt and FLUX share; a family file states only its protocol.

    A family sets the class attributes below and overrides prompt_rows (how prompts become condition rows) and
    predict_noise; where it differs it also overrides components (load-time choices), default_size / size_step,
    and protocol (what describe records). The forward process is DDPM on the scheduler's betas (FlowModel: flow).
    x0 = (VAE posterior mean [- shift_factor]) x scaling_factor of the reference-preprocessed image.
    """

    conditioning = "text"
    #: How load errors name the family ("Stable Diffusion 3").
    title: ClassVar[str]
    #: The pipelines (model_index.json _class_name) of the family's folders; other folders load as the first.
    pipelines: ClassVar[tuple[str, ...]]
    #: The denoiser: its attribute on the pipeline and here (also the load option that swaps it: unet=,
    #: transformer=) and its diffusers class.
    denoiser_attr = "transformer"
    denoiser_class: ClassVar[str]
    #: Whether diffusers' load_lora_weights serves the family's pipeline (the lora and lora_scale options).
    takes_lora: ClassVar[bool] = True
    #: The family's own load options (no_t5, flow_error, ...), besides image_size, the denoiser swap and LoRA.
    options: ClassVar[frozenset[str]] = frozenset()
    #: x0 subtracts the VAE's shift_factor (False: the pipelines that decode with the scaling factor alone).
    vae_shift: ClassVar[bool] = True
    #: The VAE in float32 whatever the dtype: one encode per image, and SDXL's VAE overflows in float16.
    float32_networks = frozenset({"vae"})

    def __init__(self, pipe: Any, image_size: int | None = None, name: str = "", own: dict[str, str] | None = None):
        self.pipe, self.vae, self.name = pipe, pipe.vae, name
        setattr(self, self.denoiser_attr, getattr(pipe, self.denoiser_attr))  # the fast path swaps in its copy
        self.device, self.dtype = self.denoiser.device, self.denoiser.dtype
        self.own_weights = own or {}  # --unet / --transformer / --lora / --lora-scale, recorded beside results
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_size = image_size or self.default_size()
        if self.image_size % self.size_step():
            raise UserInputError(f"--image-size must be a multiple of {self.size_step()} for this model")

    @classmethod
    def detect(cls, path: Path) -> bool:
        """Whether a folder holds one of the family's pipelines."""
        return pipeline_class(path) in cls.pipelines

    @classmethod
    def from_pretrained(
        cls,
        path: Path,
        dtype: torch.dtype,
        device: torch.device,
        image_size: int | None = None,
        lora: str | None = None,
        lora_scale: float = 1.0,
        **options: Any,
    ) -> DiffusersModel:
        """The family's pipeline from a folder. options: the denoiser swap (unet= or transformer=: a fine-tuned one,
        load_denoiser) and the family's own options; lora: fused in at lora_scale (apply_lora)."""
        swap = options.pop(cls.denoiser_attr, None)
        pipe = load_pipeline(cls, path, dtype, swap, options)
        if lora is not None:
            apply_lora(pipe, lora, lora_scale)
        for net in pipe.components.values():
            if isinstance(net, torch.nn.Module):
                net.to(device).eval().requires_grad_(False)
        own = own_weights((cls.denoiser_attr, swap), lora, lora_scale)
        return cls(pipe, image_size, str(path), own, **options)

    @classmethod
    def components(cls, path: Path, options: dict[str, Any]) -> dict[str, Any]:
        """Components (or pipeline arguments) to load other than the folder says; takes its options out of options."""
        return {}

    @classmethod
    def pipeline_type(cls, path: Path) -> str:
        """The diffusers pipeline class a folder loads as: its own when the family lists it, else the first."""
        found = pipeline_class(path)
        return found if found in cls.pipelines else cls.pipelines[0]

    @cached_property
    def forward_process(self) -> ForwardProcess:
        """DDPM on the scheduler config's alpha_bar and prediction_type (PNDM, Euler, DPM-Solver: the same betas)."""
        return ddpm_process(self.pipe.scheduler.config)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.denoiser_attr)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        if isinstance(self.forward_process, DDPMProcess):
            return self.forward_process.alphas_cumprod
        return super().alphas_cumprod

    def default_size(self) -> int:
        """The input size (px) when none is given: the denoiser's sample size in pixels."""
        return self.denoiser.config.sample_size * self.vae_scale_factor

    def size_step(self) -> int:
        """What an input size must be a multiple of: one latent pixel, times the denoiser's patch size."""
        return self.vae_scale_factor * (self.denoiser.config.get("patch_size") or 1)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.image_size // self.vae_scale_factor
        return (self.vae.config.latent_channels, s, s)

    def encode(self, image: Any) -> torch.Tensor:
        pixels = reference_transform(self.open_image(image), self.image_size)
        return vae_latent(self.vae, pixels, shift=self.vae_shift)

    @torch.inference_mode()
    def condition(self, conditions: list[str]) -> torch.Tensor:
        """One row per prompt (prompt_rows), 64 prompts at a time."""
        return torch.cat([self.prompt_rows(conditions[i : i + 64]) for i in range(0, len(conditions), 64)])

    @abstractmethod
    def prompt_rows(self, prompts: list[str]) -> torch.Tensor:
        """The condition rows of a few prompts: the family's text encoders, as its pipeline runs them."""

    def networks(self) -> dict[str, torch.nn.Module]:
        nets = {k: m for k, m in self.pipe.components.items() if isinstance(m, torch.nn.Module)}
        return {**nets, self.denoiser_attr: self.denoiser}

    def protocol(self) -> dict[str, Any]:
        """What describe() records of the protocol: the parameterisation and the family's settings."""
        if isinstance(self.forward_process, RectifiedFlow):
            return {"parameterization": "flow", "flow_error": self.forward_process.error}
        return {"prediction_type": self.forward_process.prediction_type}

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": type(self).__name__,
            "model": self.name,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.protocol(),
            **self.own_weights,
        }


class FlowModel(DiffusersModel):
    """A rectified-flow family (forward_process.RectifiedFlow, on the scheduler's timestep grid, no shift) whose
    transformer takes pooled prompt embeddings; flow_error: what the per-trial error compares (eps or velocity)."""

    options = frozenset({"flow_error"})

    def __init__(
        self,
        pipe: Any,
        image_size: int | None = None,
        name: str = "",
        own: dict[str, str] | None = None,
        flow_error: FlowError = "eps",
    ):
        if flow_error not in FLOW_ERRORS:
            raise UserInputError(f"unknown flow error {flow_error!r}; choose one of {', '.join(FLOW_ERRORS)}")
        super().__init__(pipe, image_size, name, own)
        self.forward_process = RectifiedFlow(pipe.scheduler.config.num_train_timesteps, error=flow_error)
        self.pooled_dim = self.transformer.config.pooled_projection_dim


def load_pipeline(cls: type[DiffusersModel], path: Path, dtype: torch.dtype, swap: Any, options: dict) -> Any:
    """A family's pipeline from a folder, every load error one line: its float32 networks in float32, swap (a
    fine-tuned denoiser) instead of the folder's, the family's components."""
    import diffusers

    kw: dict[str, Any] = {"torch_dtype": dtype, "use_safetensors": True}
    if swap is not None:
        kw[cls.denoiser_attr] = load_denoiser(getattr(diffusers, cls.denoiser_class), swap, cls.denoiser_attr, dtype)
    try:
        kw.update(cls.components(path, options))
        if "vae" in cls.float32_networks:
            kw["vae"] = diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
        return getattr(diffusers, cls.pipeline_type(path)).from_pretrained(path, **kw)
    except UserInputError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise load_failed(cls.title, path, exc) from None


Model = TypeVar("Model", bound=type[DiffusersModel])


def pipeline_family(name: str, description: str) -> Callable[[Model], Model]:
    """A class decorator: registers a DiffusersModel family under name with the load options it takes."""

    def register(cls: Model) -> Model:
        lora = {"lora", "lora_scale"} if cls.takes_lora else set()
        options = frozenset({"image_size", cls.denoiser_attr, *lora, *cls.options})
        register_family(Family(name, cls.detect, cls.from_pretrained, options=options, description=description))
        return cls

    return register

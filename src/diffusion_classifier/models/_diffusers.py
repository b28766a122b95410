"""What the diffusers families share: folder detection, load errors, VAE latents, learned sigma, own weights (LoRA,
a swapped denoiser), and condition rows that carry prompt embeddings with a vector (pooled embeddings, a mask)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.images import load_image, reference_transform
from ..errors import UserInputError


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
def vae_latent(vae: Any, image: Any, size: int, shift: bool = True) -> torch.Tensor:
    """x0 of one image: (VAE posterior mean - shift_factor) x scaling_factor of the reference-preprocessed image.

    shift=False leaves shift_factor out (families whose pipelines decode with the scaling factor alone).
    """
    x = reference_transform(load_image(image), size)[None].to(vae.device, vae.dtype)
    mean, cfg = vae.encode(x).latent_dist.mean, vae.config
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

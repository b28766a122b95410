"""Stable Diffusion 1.x / 2.x (diffusers folders or hub ids): VAE latents, CLIP text conditions, the UNet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..data.images import reference_transform
from ..errors import UserInputError
from ..forward_process import DDPMProcess
from . import Family, register_family
from .base import DiffusionAdapter

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class StableDiffusionModel(DiffusionAdapter):
    """x0 = VAE posterior mean x scaling_factor; conditions = CLIP embeddings of max-length-padded prompts."""

    conditioning = "text"
    denoiser_attr = "unet"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, image_size: int | None = None, name: str = ""):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.device, self.dtype = unet.device, unet.dtype
        self.name = name
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self._alphas_cumprod = scheduler.alphas_cumprod.float().cpu()
        self.forward_process = DDPMProcess(self._alphas_cumprod, self.prediction_type)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = image_size or unet.config.sample_size * self.vae_scale_factor
        if self.image_size % self.vae_scale_factor:
            raise UserInputError(f"--image-size must be a multiple of {self.vae_scale_factor}")

    @classmethod
    def from_pretrained(
        cls, path: Path, dtype: torch.dtype, device: torch.device, image_size: int | None = None, **_: Any
    ) -> StableDiffusionModel:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise UserInputError(f"model folder {path} lacks {', '.join(missing)}/: not a Stable Diffusion pipeline")
        try:
            kw = {"torch_dtype": dtype, "use_safetensors": True}
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
            text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **kw)
            tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
            scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UserInputError(f"cannot load Stable Diffusion from {path}: {first}") from None
        for m in (unet, vae, text_encoder):
            m.to(device).eval().requires_grad_(False)
        return cls(unet, vae, text_encoder, tokenizer, scheduler, image_size=image_size, name=str(path))

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.image_size // self.vae_scale_factor
        return (self.unet.config.in_channels, s, s)

    @torch.inference_mode()
    def encode(self, image) -> torch.Tensor:
        x = reference_transform(image, self.image_size)[None].to(self.device, self.vae.dtype)
        latent = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        return latent[0].float()

    @torch.inference_mode()
    def condition(self, conditions: list[str]) -> torch.Tensor:
        # a tokenizer saved without model_max_length reports a huge sentinel: the encoder's length rules
        max_length = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        rows = []
        for start in range(0, len(conditions), 64):
            ids = self.tokenizer(
                conditions[start : start + 64],
                padding="max_length",
                max_length=max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            rows.append(self.text_encoder(ids.to(self.device))[0])
        return torch.cat(rows)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.unet(x_t, t, encoder_hidden_states=cond).sample
        return self.forward_process.prediction(out, x_t, t)

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": "StableDiffusionModel",
            "model": self.name,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "prediction_type": self.prediction_type,
        }


def is_stable_diffusion_folder(path: Path) -> bool:
    index = path / "model_index.json"
    if not index.is_file():
        return False
    try:
        cls_name = json.loads(index.read_text()).get("_class_name", "")
    except (json.JSONDecodeError, OSError):
        return False
    return cls_name.startswith("StableDiffusion") and "XL" not in cls_name


register_family(Family("stable-diffusion", is_stable_diffusion_folder, StableDiffusionModel.from_pretrained))

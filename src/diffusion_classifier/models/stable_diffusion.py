"""Stable Diffusion 1.x / 2.x (diffusers folders or hub ids): VAE latents, CLIP text conditions, the UNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.images import load_image, reference_transform
from ..errors import UserInputError
from ..forward_process import DDPMProcess
from . import Family, register_family
from ._diffusers import apply_lora, load_denoiser, load_failed, own_weights, pipeline_class
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
        self.own_weights: dict[str, str] = {}  # --unet / --lora / --lora-scale, recorded beside results
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self._alphas_cumprod = scheduler.alphas_cumprod.float().cpu()
        self.forward_process = DDPMProcess(self._alphas_cumprod, self.prediction_type)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = image_size or unet.config.sample_size * self.vae_scale_factor
        if self.image_size % self.vae_scale_factor:
            raise UserInputError(f"--image-size must be a multiple of {self.vae_scale_factor}")

    @classmethod
    def from_pretrained(
        cls,
        path: Path,
        dtype: torch.dtype,
        device: torch.device,
        image_size: int | None = None,
        unet: str | None = None,
        lora: str | None = None,
        lora_scale: float = 1.0,
        **_: Any,
    ) -> StableDiffusionModel:
        """Components from a pipeline folder; unet: a fine-tuned UNet instead of unet/; lora: fused in (scale)."""
        from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise UserInputError(f"model folder {path} lacks {', '.join(missing)}/: not a Stable Diffusion pipeline")
        try:
            kw = {"torch_dtype": dtype, "use_safetensors": True}
            net = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw) if unet is None else None
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
            text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **kw)
            tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
            scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise load_failed("Stable Diffusion", path, exc) from None
        if unet is not None:
            net = load_denoiser(UNet2DConditionModel, unet, "unet", dtype)
        if lora is not None:  # the pipeline object only hosts diffusers' LoRA loader; it shares the modules
            pipe = StableDiffusionPipeline(
                vae, text_encoder, tokenizer, net, scheduler, None, None, requires_safety_checker=False
            )
            apply_lora(pipe, lora, lora_scale)
        for m in (net, vae, text_encoder):
            m.to(device).eval().requires_grad_(False)
        model = cls(net, vae, text_encoder, tokenizer, scheduler, image_size=image_size, name=str(path))
        model.own_weights = own_weights(("unet", unet), lora, lora_scale)
        return model

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.image_size // self.vae_scale_factor
        return (self.unet.config.in_channels, s, s)

    @torch.inference_mode()
    def encode(self, image) -> torch.Tensor:
        x = reference_transform(load_image(image), self.image_size)[None].to(self.device, self.vae.dtype)
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
            **self.own_weights,
        }


def is_stable_diffusion_folder(path: Path) -> bool:
    """SD 1.x / 2.x pipelines (StableDiffusionPipeline and its img2img/inpaint siblings), not SDXL or SD3."""
    cls_name = pipeline_class(path)
    return cls_name.startswith("StableDiffusion") and not cls_name.startswith(("StableDiffusionXL", "StableDiffusion3"))


register_family(
    Family(
        "stable-diffusion",
        is_stable_diffusion_folder,
        StableDiffusionModel.from_pretrained,
        options=frozenset({"image_size", "unet", "lora", "lora_scale"}),
        description="Stable Diffusion 1.x / 2.x (epsilon or v_prediction), 512 or 768 px",
    )
)

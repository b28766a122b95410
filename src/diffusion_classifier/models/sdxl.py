"""Stable Diffusion XL (base 1.0 layout, StableDiffusionXLPipeline folders or hub ids): two CLIP encoders, pooled
embeddings and size micro-conditioning, the VAE in float32.

Protocol (DDPM, as SD 1.x / 2.x): x0 = VAE posterior mean x scaling_factor of the reference-preprocessed image
(VAE always in float32: SDXL's VAE overflows in float16); conditions = the pipeline's own
encode_prompt(prompt, device, 1, do_classifier_free_guidance=False): prompt embeddings (77, 2048) and pooled
embeddings (1280,), carried in one row (_diffusers.pack_pooled); time_ids = (H, W, 0, 0, H, W) with H = W =
the input size (original size = target size, crop at (0, 0)); the UNet predicts eps (or v, converted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from . import Family, register_family
from ._diffusers import apply_lora, load_denoiser, load_failed, own_weights, pack_pooled, pipeline_class, unpack_pooled
from .stable_diffusion import StableDiffusionModel


class StableDiffusionXLModel(StableDiffusionModel):
    """SD's adapter with SDXL's conditions: prompt and pooled embeddings, and the size time_ids."""

    def __init__(self, pipe, image_size: int | None = None, name: str = ""):
        from diffusers import DDPMScheduler

        # alpha_bar and prediction_type from the pipeline's scheduler config (Euler for SDXL: the same betas)
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        super().__init__(pipe.unet, pipe.vae, pipe.text_encoder_2, pipe.tokenizer_2, scheduler, image_size, name)
        self.pipe = pipe  # encode_prompt is the pipeline's own
        self.pooled_dim = pipe.text_encoder_2.config.projection_dim
        s = float(self.image_size)
        self.time_ids = torch.tensor([s, s, 0.0, 0.0, s, s])  # (original H, W, crop top, left, target H, W)

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
    ) -> StableDiffusionXLModel:
        from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel

        kw: dict[str, Any] = {"torch_dtype": dtype, "use_safetensors": True, "add_watermarker": False}
        if unet is not None:
            kw["unet"] = load_denoiser(UNet2DConditionModel, unet, "unet", dtype)
        try:  # the VAE in float32 always: SDXL's overflows in float16
            kw["vae"] = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
            pipe = StableDiffusionXLPipeline.from_pretrained(path, **kw)
        except (OSError, ValueError, TypeError) as exc:
            raise load_failed("Stable Diffusion XL", path, exc) from None
        if pipe.text_encoder_2 is None or pipe.tokenizer_2 is None:
            raise UserInputError(f"{path}: an SDXL pipeline without text_encoder_2/ cannot condition on prompts")
        if lora is not None:
            apply_lora(pipe, lora, lora_scale)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            if m is not None:
                m.to(device).eval().requires_grad_(False)
        model = cls(pipe, image_size=image_size, name=str(path))
        model.own_weights = own_weights(("unet", unet), lora, lora_scale)
        return model

    @torch.inference_mode()
    def condition(self, conditions: list[str]) -> torch.Tensor:
        """Per prompt: encode_prompt's prompt embeddings (L, D) with its pooled embedding packed in extra rows."""
        rows = []
        for start in range(0, len(conditions), 64):
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                conditions[start : start + 64], device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )  # fmt: skip
            rows.append(pack_pooled(embeds, pooled))
        return torch.cat(rows)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        embeds, pooled = unpack_pooled(cond, self.pooled_dim)
        time_ids = self.time_ids.to(x_t.device, embeds.dtype).expand(len(x_t), -1)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        out = self.unet(x_t, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        return self.forward_process.prediction(out, x_t, t)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "adapter": "StableDiffusionXLModel"}


def is_sdxl_folder(path: Path) -> bool:
    return pipeline_class(path) == "StableDiffusionXLPipeline"


register_family(
    Family(
        "sdxl",
        is_sdxl_folder,
        StableDiffusionXLModel.from_pretrained,
        options=frozenset({"image_size", "unet", "lora", "lora_scale"}),
        description="Stable Diffusion XL base (epsilon; two CLIP encoders, pooled + size conditioning), 1024 px",
    )
)

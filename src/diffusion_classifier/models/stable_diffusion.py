"""Stable Diffusion 1.x / 2.x (diffusers folders or hub ids): VAE latents, CLIP text conditions, the UNet.

Protocol (DDPM, the paper's): x0 = VAE posterior mean x scaling_factor of the reference-preprocessed image (the VAE
in the model's dtype, as the official code loads it); conditions = CLIP embeddings of max-length-padded prompts;
x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps; the UNet predicts eps (or v, converted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ._diffusers import DiffusersModel, pipeline_class, pipeline_family

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@pipeline_family("stable-diffusion", "Stable Diffusion 1.x / 2.x (epsilon or v_prediction), 512 or 768 px")
class StableDiffusionModel(DiffusersModel):
    """x0 = VAE posterior mean x scaling_factor; conditions = CLIP embeddings of max-length-padded prompts."""

    title = "Stable Diffusion"
    pipelines = ("StableDiffusionPipeline",)
    denoiser_attr, denoiser_class = "unet", "UNet2DConditionModel"
    vae_shift = False
    float32_networks = frozenset()  # the VAE in the model's dtype, as the official code runs it

    @classmethod
    def detect(cls, path: Path) -> bool:
        """SD 1.x / 2.x pipelines (StableDiffusionPipeline and its img2img/inpaint siblings), not SDXL or SD3."""
        name = pipeline_class(path)
        return name.startswith("StableDiffusion") and not name.startswith(("StableDiffusionXL", "StableDiffusion3"))

    @classmethod
    def components(cls, path: Path, options: dict[str, Any]) -> dict[str, Any]:
        """No safety checker; the tokenizer AutoTokenizer reads (a fast one)."""
        from transformers import AutoTokenizer

        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise UserInputError(f"model folder {path} lacks {', '.join(missing)}/: not a Stable Diffusion pipeline")
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        return {"tokenizer": tokenizer, "safety_checker": None, "feature_extractor": None,
                "requires_safety_checker": False}  # fmt: skip

    def prompt_rows(self, prompts: list[str]) -> torch.Tensor:
        tokenizer, text_encoder = self.pipe.tokenizer, self.pipe.text_encoder
        # a tokenizer saved without model_max_length reports a huge sentinel: the encoder's length rules
        max_length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
        ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        return text_encoder(ids.input_ids.to(self.device))[0]

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.unet(x_t, t, encoder_hidden_states=cond).sample
        return self.forward_process.prediction(out, x_t, t)

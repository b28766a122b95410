"""Stable Diffusion XL (base 1.0 layout, StableDiffusionXLPipeline folders or hub ids): two CLIP encoders, pooled
embeddings and size micro-conditioning, the VAE in float32.

Protocol (DDPM, as SD 1.x / 2.x): x0 = VAE posterior mean x scaling_factor of the reference-preprocessed image
(VAE always in float32: SDXL's VAE overflows in float16); conditions = the pipeline's own
encode_prompt(prompt, device, 1, do_classifier_free_guidance=False): prompt embeddings (77, 2048) and pooled
embeddings (1280,), carried in one row (_diffusers.pack_pooled); time_ids = (H, W, 0, 0, H, W) with H = W =
the input size (original size = target size, crop at (0, 0)); the UNet predicts eps (or v, converted).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserInputError
from ._diffusers import DiffusersModel, pack_pooled, pipeline_family, unpack_pooled


@pipeline_family("sdxl", "Stable Diffusion XL base (epsilon; two CLIP encoders, pooled + size conditioning), 1024 px")
class StableDiffusionXLModel(DiffusersModel):
    """SD's protocol with SDXL's conditions: prompt and pooled embeddings, and the size time_ids."""

    title = "Stable Diffusion XL"
    pipelines = ("StableDiffusionXLPipeline",)
    denoiser_attr, denoiser_class = "unet", "UNet2DConditionModel"
    vae_shift = False

    def __init__(self, pipe: Any, image_size: int | None = None, name: str = "", own: dict[str, str] | None = None):
        if pipe.text_encoder_2 is None or pipe.tokenizer_2 is None:
            raise UserInputError(f"{name}: an SDXL pipeline without text_encoder_2/ cannot condition on prompts")
        super().__init__(pipe, image_size, name, own)
        self.pooled_dim = pipe.text_encoder_2.config.projection_dim
        s = float(self.image_size)
        self.time_ids = torch.tensor([s, s, 0.0, 0.0, s, s])  # (original H, W, crop top, left, target H, W)

    @classmethod
    def components(cls, path, options: dict[str, Any]) -> dict[str, Any]:
        return {"add_watermarker": False}

    def prompt_rows(self, prompts: list[str]) -> torch.Tensor:
        """encode_prompt's prompt embeddings (L, D) with the pooled embedding packed in extra rows."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return pack_pooled(embeds, pooled)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        embeds, pooled = unpack_pooled(cond, self.pooled_dim)
        time_ids = self.time_ids.to(x_t.device, embeds.dtype).expand(len(x_t), -1)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        out = self.unet(x_t, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        return self.forward_process.prediction(out, x_t, t)

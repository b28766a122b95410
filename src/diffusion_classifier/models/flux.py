"""FLUX.1 schnell / dev (FluxPipeline folders or hub ids): a rectified-flow transformer on packed 2 x 2 latent patches.

Protocol (forward_process.RectifiedFlow, as SD3): timestep index t means sigma = (t + 1) / 1000 on the linear grid
(no shift), x_t = (1 - sigma) x0 + sigma eps, the transformer predicts v; the error compares eps with eps_hat =
x_t + (1 - sigma) v (flow_error="velocity": v with v_target = eps - x0). x0 = (VAE posterior mean - shift_factor) x
scaling_factor of the reference-preprocessed image (VAE in float32), kept unpacked (C, h, w) so that trial noise has
the latent's shape; each call packs x_t as FluxPipeline._pack_latents does, passes the latent image ids of
_prepare_latent_image_ids, text ids of zeros, timestep sigma (the pipeline's timestep / 1000), dev's guidance
embedding at 1.0, and unpacks v. Conditions: the pipeline's own encode_prompt(prompt, prompt_2=None, device, 1,
max_sequence_length): T5 embeddings (L, 4096) and the pooled CLIP embedding (768,), in one row
(_diffusers.pack_pooled); L = 256 for schnell and 512 for dev, as in Black Forest Labs' reference code.
"""

from __future__ import annotations

from typing import Any

import torch

from ._diffusers import FlowModel, pack_pooled, pipeline_family, unpack_pooled

#: dev's guidance embedding: 1.0, the scale at which the guidance-distilled model predicts the plain conditional v
GUIDANCE = 1.0


def t5_length(guidance_embeds: bool) -> int:
    """T5 tokens per prompt: 512 for guidance-distilled models (dev), 256 for schnell (no guidance embedding), as
    Black Forest Labs' reference code (flux/cli.py: max_length=256 if name == "flux-schnell" else 512)."""
    return 512 if guidance_embeds else 256


@pipeline_family("flux", "FLUX.1 schnell / dev (rectified flow, packed latents; CLIP pooled + T5), 1024 px")
class FluxModel(FlowModel):
    """x0 = (VAE mean - shift) x scale; conditions = encode_prompt's T5 + pooled CLIP; eps_hat from the packed v."""

    title = "FLUX"
    pipelines = ("FluxPipeline",)
    denoiser_class = "FluxTransformer2DModel"

    @property
    def guidance(self) -> bool:
        """Whether the transformer embeds a guidance scale (dev: guidance-distilled; schnell: not)."""
        return self.transformer.config.guidance_embeds

    @property
    def text_length(self) -> int:
        return t5_length(self.guidance)

    def default_size(self) -> int:
        return self.pipe.default_sample_size * self.vae_scale_factor  # FluxPipeline's (1024 px), not the config's

    def size_step(self) -> int:
        return 2 * self.vae_scale_factor  # latents are packed in 2 x 2 patches

    def prompt_rows(self, prompts: list[str]) -> torch.Tensor:
        """encode_prompt's T5 embeddings (L, D) with the pooled CLIP embedding packed in extra rows."""
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompts, prompt_2=None, device=self.device, num_images_per_prompt=1, max_sequence_length=self.text_length
        )
        return pack_pooled(embeds, pooled)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        embeds, pooled = unpack_pooled(cond, self.pooled_dim)
        B, C, h, w = x_t.shape
        # the pipeline passes its scheduler's timestep (sigma * 1000) in the latents' dtype, divided by 1000
        timestep = self.forward_process.model_timestep(t).to(x_t.device, x_t.dtype) / 1000
        guidance = torch.full((B,), GUIDANCE, device=x_t.device) if self.guidance else None
        v = self.transformer(
            hidden_states=self.pipe._pack_latents(x_t, B, C, h, w), timestep=timestep, guidance=guidance,
            pooled_projections=pooled, encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
            img_ids=self.pipe._prepare_latent_image_ids(B, h // 2, w // 2, x_t.device, x_t.dtype),
        ).sample  # fmt: skip
        v = self.pipe._unpack_latents(v, h * self.vae_scale_factor, w * self.vae_scale_factor, self.vae_scale_factor)
        return self.forward_process.prediction(v, x_t, t)

    def protocol(self) -> dict[str, Any]:
        guidance = GUIDANCE if self.guidance else None
        return {**super().protocol(), "guidance": guidance, "text_length": self.text_length}

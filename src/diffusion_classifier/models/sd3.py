"""Stable Diffusion 3 / 3.5 (StableDiffusion3Pipeline folders or hub ids): an MMDiT trained with rectified flow.

Protocol (forward_process.RectifiedFlow): timestep index t means sigma = (t + 1) / 1000 on the linear grid (no
shift), x_t = (1 - sigma) x0 + sigma eps, the transformer gets timestep sigma * 1000 and predicts v; the error
compares eps with eps_hat = x_t + (1 - sigma) v, so every family's errors share the eps scale (flow_error="velocity":
v with v_target = eps - x0 instead). x0 = (VAE posterior mean - shift_factor) x scaling_factor of the
reference-preprocessed image (VAE in float32). Conditions: the pipeline's own encode_prompt(prompt, None, None,
device, 1, do_classifier_free_guidance=False): prompt embeddings (77 + 256, 4096) and pooled embeddings (2048,),
in one row (_diffusers.pack_pooled). Without T5 (a folder that lacks it, or no_t5=True) encode_prompt puts zeros
in the T5 positions, as the pipeline does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ._diffusers import FlowModel, pack_pooled, pipeline_family, unpack_pooled


@pipeline_family("sd3", "Stable Diffusion 3 / 3.5 (rectified flow, MMDiT; CLIP x2 + optional T5), 1024 px")
class StableDiffusion3Model(FlowModel):
    """x0 = (VAE mean - shift) x scale; conditions = encode_prompt's embeddings + pooled; eps_hat from the flow v."""

    title = "Stable Diffusion 3"
    pipelines = ("StableDiffusion3Pipeline",)
    denoiser_class = "SD3Transformer2DModel"
    options = FlowModel.options | {"no_t5"}

    @classmethod
    def components(cls, path: Path, options: dict[str, Any]) -> dict[str, Any]:
        """no_t5: leave the T5 encoder out (saves ~9 GB at float16; its positions get zeros, as the pipeline does)."""
        if options.pop("no_t5", False) or not (path / "text_encoder_3").is_dir():  # a folder saved without T5
            return {"text_encoder_3": None, "tokenizer_3": None}
        return {}

    def prompt_rows(self, prompts: list[str]) -> torch.Tensor:
        """encode_prompt's prompt embeddings (L, D) with the pooled embedding packed in extra rows."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )  # fmt: skip
        return pack_pooled(embeds, pooled)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        embeds, pooled = unpack_pooled(cond, self.pooled_dim)
        timestep = self.forward_process.model_timestep(t)  # sigma * 1000, float32 as the pipeline's
        v = self.transformer(
            hidden_states=x_t, timestep=timestep, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
        return self.forward_process.prediction(v, x_t, t)

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "t5": self.pipe.text_encoder_3 is not None}

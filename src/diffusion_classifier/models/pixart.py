"""PixArt-alpha / PixArt-Sigma (PixArtAlphaPipeline / PixArtSigmaPipeline folders or hub ids): a DiT on T5 prompts.

Protocol (DDPM, as SD): x0 = VAE posterior mean x scaling_factor of the reference-preprocessed image (VAE in
float32); conditions = the pipeline's own encode_prompt(prompt, do_classifier_free_guidance=False,
num_images_per_prompt=1, device, clean_caption=False): T5 embeddings (120 tokens for alpha, 300 for Sigma: the
method's default max_sequence_length) and their attention mask, the mask carried in one row after the embeddings
(_diffusers.pack_pooled); x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps with alpha_bar of the
scheduler config; the transformer gets t, the mask, and, where it uses additional conditions (PixArt-alpha 1024),
resolution (H, W) and aspect ratio H / W of the input; its output keeps the eps half (learned sigma).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ._diffusers import DiffusersModel, pack_pooled, pipeline_family, split_learned_sigma, unpack_pooled


@pipeline_family("pixart", "PixArt-alpha / PixArt-Sigma (epsilon, learned sigma; T5 with its mask), 1024 px")
class PixArtModel(DiffusersModel):
    """x0 = VAE mean x scale; conditions = encode_prompt's T5 embeddings with their mask; eps = the output's half."""

    title = "PixArt"
    pipelines = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    denoiser_class = "PixArtTransformer2DModel"
    takes_lora = False  # the PixArt pipelines have no LoRA loader
    vae_shift = False

    def __init__(self, pipe: Any, image_size: int | None = None, name: str = "", own: dict[str, str] | None = None):
        super().__init__(pipe, image_size, name, own)
        # the prompt length encode_prompt pads to (alpha 120, Sigma 300): the mask's length in the condition rows
        self.text_length = inspect.signature(pipe.encode_prompt).parameters["max_sequence_length"].default

    def prompt_rows(self, prompts: list[str]) -> torch.Tensor:
        """encode_prompt's T5 embeddings (L, D) with the attention mask (L,) packed in the rows after."""
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, num_images_per_prompt=1, device=self.device,
            clean_caption=False,
        )  # fmt: skip
        return pack_pooled(embeds, mask.to(embeds.dtype))

    def added_conditions(self, batch: int, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
        """PixArt-alpha 1024's micro-conditions: resolution (H, W) and aspect ratio H / W of the input, as the
        pipeline sets them; None for transformers without additional conditions (Sigma, alpha 256 / 512)."""
        if not self.transformer.use_additional_conditions:
            return {"resolution": None, "aspect_ratio": None}
        s = float(self.image_size)
        resolution = torch.tensor([[s, s]], device=self.device, dtype=dtype).expand(batch, -1)
        aspect_ratio = torch.ones(batch, 1, device=self.device, dtype=dtype)  # square inputs: H / W = 1
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        embeds, mask = unpack_pooled(cond, self.text_length)
        out = self.transformer(
            x_t, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=t,
            added_cond_kwargs=self.added_conditions(len(x_t), embeds.dtype),
        ).sample  # fmt: skip
        return self.forward_process.prediction(split_learned_sigma(out, x_t.shape[1]), x_t, t)

    def protocol(self) -> dict[str, Any]:
        return {"pipeline": type(self.pipe).__name__, **super().protocol(), "text_length": self.text_length}

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
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..forward_process import DDPMProcess
from . import Family, register_family
from ._diffusers import (
    load_denoiser,
    load_failed,
    own_weights,
    pack_pooled,
    pipeline_class,
    split_learned_sigma,
    unpack_pooled,
    vae_latent,
)
from .base import DiffusionAdapter

PIPELINES = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")


class PixArtModel(DiffusionAdapter):
    """x0 = VAE mean x scale; conditions = encode_prompt's T5 embeddings with their mask; eps = the output's half."""

    conditioning = "text"
    denoiser_attr = "transformer"

    def __init__(self, pipe, image_size: int | None = None, name: str = ""):
        from diffusers import DDPMScheduler

        self.pipe, self.transformer, self.vae, self.name = pipe, pipe.transformer, pipe.vae, name
        self.device, self.dtype = self.transformer.device, self.transformer.dtype
        # alpha_bar and prediction_type from the pipeline's scheduler config (DPM-Solver for PixArt: the same betas)
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = scheduler.config.prediction_type
        self._alphas_cumprod = scheduler.alphas_cumprod.float().cpu()
        self.forward_process = DDPMProcess(self._alphas_cumprod, self.prediction_type)
        # the prompt length encode_prompt pads to (alpha 120, Sigma 300): the mask's length in the condition rows
        self.text_length = inspect.signature(pipe.encode_prompt).parameters["max_sequence_length"].default
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_size = image_size or self.transformer.config.sample_size * self.vae_scale_factor
        step = self.vae_scale_factor * self.transformer.config.patch_size
        if self.image_size % step:
            raise UserInputError(f"--image-size must be a multiple of {step} for this model")
        self.own_weights: dict[str, str] = {}

    @classmethod
    def from_pretrained(
        cls,
        path: Path,
        dtype: torch.dtype,
        device: torch.device,
        image_size: int | None = None,
        transformer: str | None = None,
        **_: Any,
    ) -> PixArtModel:
        """Components from a pipeline folder; transformer: a fine-tuned PixArtTransformer2DModel instead."""
        import diffusers
        from diffusers import AutoencoderKL, PixArtTransformer2DModel

        pipeline_cls = getattr(diffusers, pipeline_class(path))
        kw: dict[str, Any] = {"torch_dtype": dtype, "use_safetensors": True}
        if transformer is not None:
            kw["transformer"] = load_denoiser(PixArtTransformer2DModel, transformer, "transformer", dtype)
        try:  # the VAE in float32: one encode per image, no overflow (Sigma uses SDXL's VAE)
            kw["vae"] = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
            pipe = pipeline_cls.from_pretrained(path, **kw)
        except (OSError, ValueError, TypeError) as exc:
            raise load_failed("PixArt", path, exc) from None
        for m in (pipe.transformer, pipe.vae, pipe.text_encoder):
            m.to(device).eval().requires_grad_(False)
        model = cls(pipe, image_size=image_size, name=str(path))
        model.own_weights = own_weights(("transformer", transformer), None, 1.0)
        return model

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.image_size // self.vae_scale_factor
        return (self.transformer.config.in_channels, s, s)

    def encode(self, image: Any) -> torch.Tensor:
        return vae_latent(self.vae, image, self.image_size, shift=False)

    @torch.inference_mode()
    def condition(self, conditions: list[str]) -> torch.Tensor:
        """Per prompt: encode_prompt's T5 embeddings (L, D) with the attention mask (L,) packed in the rows after."""
        rows = []
        for start in range(0, len(conditions), 64):
            embeds, mask, _, _ = self.pipe.encode_prompt(
                conditions[start : start + 64], do_classifier_free_guidance=False, num_images_per_prompt=1,
                device=self.device, clean_caption=False,
            )  # fmt: skip
            rows.append(pack_pooled(embeds, mask.to(embeds.dtype)))
        return torch.cat(rows)

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

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": "PixArtModel",
            "model": self.name,
            "pipeline": type(self.pipe).__name__,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "prediction_type": self.prediction_type,
            "text_length": self.text_length,
            **self.own_weights,
        }


def is_pixart_folder(path: Path) -> bool:
    return pipeline_class(path) in PIPELINES


register_family(
    Family(
        "pixart",
        is_pixart_folder,
        PixArtModel.from_pretrained,
        options=frozenset({"image_size", "transformer"}),
        description="PixArt-alpha / PixArt-Sigma (epsilon, learned sigma; T5 with its mask), 1024 px",
    )
)

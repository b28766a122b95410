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

from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..forward_process import FLOW_ERRORS, FlowError, RectifiedFlow
from . import Family, register_family
from ._diffusers import (
    apply_lora,
    load_denoiser,
    load_failed,
    own_weights,
    pack_pooled,
    pipeline_class,
    unpack_pooled,
    vae_latent,
)
from .base import DiffusionAdapter

#: dev's guidance embedding: 1.0, the scale at which the guidance-distilled model predicts the plain conditional v
GUIDANCE = 1.0


def t5_length(guidance_embeds: bool) -> int:
    """T5 tokens per prompt: 512 for guidance-distilled models (dev), 256 for schnell (no guidance embedding), as
    Black Forest Labs' reference code (flux/cli.py: max_length=256 if name == "flux-schnell" else 512)."""
    return 512 if guidance_embeds else 256


class FluxModel(DiffusionAdapter):
    """x0 = (VAE mean - shift) x scale; conditions = encode_prompt's T5 + pooled CLIP; eps_hat from the packed v."""

    conditioning = "text"
    denoiser_attr = "transformer"

    def __init__(self, pipe, image_size: int | None = None, flow_error: FlowError = "eps", name: str = ""):
        if flow_error not in FLOW_ERRORS:
            raise UserInputError(f"unknown flow error {flow_error!r}; choose one of {', '.join(FLOW_ERRORS)}")
        self.pipe, self.transformer, self.vae, self.name = pipe, pipe.transformer, pipe.vae, name
        self.device, self.dtype = self.transformer.device, self.transformer.dtype
        self.forward_process = RectifiedFlow(pipe.scheduler.config.num_train_timesteps, error=flow_error)
        self.pooled_dim = self.transformer.config.pooled_projection_dim
        self.guidance = self.transformer.config.guidance_embeds
        self.text_length = t5_length(self.guidance)
        self.vae_scale_factor = pipe.vae_scale_factor
        self.image_size = image_size or pipe.default_sample_size * self.vae_scale_factor
        if self.image_size % (2 * self.vae_scale_factor):  # latents are packed in 2 x 2 patches
            raise UserInputError(f"--image-size must be a multiple of {2 * self.vae_scale_factor} for this model")
        self.own_weights: dict[str, str] = {}

    @classmethod
    def from_pretrained(
        cls,
        path: Path,
        dtype: torch.dtype,
        device: torch.device,
        image_size: int | None = None,
        transformer: str | None = None,
        lora: str | None = None,
        lora_scale: float = 1.0,
        flow_error: FlowError = "eps",
        **_: Any,
    ) -> FluxModel:
        """Components from a pipeline folder; transformer: a fine-tuned one instead; lora: fused in (scale)."""
        from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

        kw: dict[str, Any] = {"torch_dtype": dtype, "use_safetensors": True}
        if transformer is not None:
            kw["transformer"] = load_denoiser(FluxTransformer2DModel, transformer, "transformer", dtype)
        try:  # the VAE in float32: one encode per image, no overflow
            kw["vae"] = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
            pipe = FluxPipeline.from_pretrained(path, **kw)
        except (OSError, ValueError, TypeError) as exc:
            raise load_failed("FLUX", path, exc) from None
        if lora is not None:
            apply_lora(pipe, lora, lora_scale)
        for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            m.to(device).eval().requires_grad_(False)
        model = cls(pipe, image_size=image_size, flow_error=flow_error, name=str(path))
        model.own_weights = own_weights(("transformer", transformer), lora, lora_scale)
        return model

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.image_size // self.vae_scale_factor
        return (self.transformer.config.in_channels // 4, s, s)  # the transformer sees 2 x 2 patches: 4 C channels

    def encode(self, image: Any) -> torch.Tensor:
        return vae_latent(self.vae, image, self.image_size)

    @torch.inference_mode()
    def condition(self, conditions: list[str]) -> torch.Tensor:
        """Per prompt: encode_prompt's T5 embeddings (L, D) with the pooled CLIP embedding packed in extra rows."""
        rows = []
        for start in range(0, len(conditions), 64):
            embeds, pooled, _ = self.pipe.encode_prompt(
                conditions[start : start + 64], prompt_2=None, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.text_length,
            )  # fmt: skip
            rows.append(pack_pooled(embeds, pooled))
        return torch.cat(rows)

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

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": "FluxModel",
            "model": self.name,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameterization": "flow",
            "flow_error": self.forward_process.error,
            "guidance": GUIDANCE if self.guidance else None,
            "text_length": self.text_length,
            **self.own_weights,
        }


def is_flux_folder(path: Path) -> bool:
    return pipeline_class(path) == "FluxPipeline"


register_family(
    Family(
        "flux",
        is_flux_folder,
        FluxModel.from_pretrained,
        options=frozenset({"image_size", "transformer", "lora", "lora_scale", "flow_error"}),
        description="FLUX.1 schnell / dev (rectified flow, packed latents; CLIP pooled + T5), 1024 px",
    )
)

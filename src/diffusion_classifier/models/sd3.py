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


class StableDiffusion3Model(DiffusionAdapter):
    """x0 = (VAE mean - shift) x scale; conditions = encode_prompt's embeddings + pooled; eps_hat from the flow v."""

    conditioning = "text"
    denoiser_attr = "transformer"

    def __init__(self, pipe, image_size: int | None = None, flow_error: FlowError = "eps", name: str = ""):
        if flow_error not in FLOW_ERRORS:
            raise UserInputError(f"unknown flow error {flow_error!r}; choose one of {', '.join(FLOW_ERRORS)}")
        self.pipe, self.transformer, self.vae, self.name = pipe, pipe.transformer, pipe.vae, name
        self.device, self.dtype = self.transformer.device, self.transformer.dtype
        self.forward_process = RectifiedFlow(pipe.scheduler.config.num_train_timesteps, error=flow_error)
        self.pooled_dim = self.transformer.config.pooled_projection_dim
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_size = image_size or self.transformer.config.sample_size * self.vae_scale_factor
        if self.image_size % (self.vae_scale_factor * self.transformer.config.patch_size):
            step = self.vae_scale_factor * self.transformer.config.patch_size
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
        lora: str | None = None,
        lora_scale: float = 1.0,
        no_t5: bool = False,
        flow_error: FlowError = "eps",
        **_: Any,
    ) -> StableDiffusion3Model:
        """no_t5: leave the T5 encoder out (saves ~9 GB at float16; its positions get zeros, as the pipeline does)."""
        from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline

        kw: dict[str, Any] = {"torch_dtype": dtype, "use_safetensors": True}
        if no_t5 or not (path / "text_encoder_3").is_dir():  # a folder saved without T5 lists no entry for it
            kw.update(text_encoder_3=None, tokenizer_3=None)
        if transformer is not None:
            kw["transformer"] = load_denoiser(SD3Transformer2DModel, transformer, "transformer", dtype)
        try:  # the VAE in float32: one encode per image, no overflow
            kw["vae"] = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
            pipe = StableDiffusion3Pipeline.from_pretrained(path, **kw)
        except (OSError, ValueError, TypeError) as exc:
            raise load_failed("Stable Diffusion 3", path, exc) from None
        if lora is not None:
            apply_lora(pipe, lora, lora_scale)
        for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
            if m is not None:
                m.to(device).eval().requires_grad_(False)
        model = cls(pipe, image_size=image_size, flow_error=flow_error, name=str(path))
        model.own_weights = own_weights(("transformer", transformer), lora, lora_scale)
        return model

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.image_size // self.vae_scale_factor
        return (self.transformer.config.in_channels, s, s)

    def encode(self, image: Any) -> torch.Tensor:
        return vae_latent(self.vae, image, self.image_size)

    @torch.inference_mode()
    def condition(self, conditions: list[str]) -> torch.Tensor:
        """Per prompt: encode_prompt's prompt embeddings (L, D) with its pooled embedding packed in extra rows."""
        rows = []
        for start in range(0, len(conditions), 64):
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                conditions[start : start + 64], prompt_2=None, prompt_3=None, device=self.device,
                num_images_per_prompt=1, do_classifier_free_guidance=False,
            )  # fmt: skip
            rows.append(pack_pooled(embeds, pooled))
        return torch.cat(rows)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        embeds, pooled = unpack_pooled(cond, self.pooled_dim)
        timestep = self.forward_process.model_timestep(t)  # sigma * 1000, float32 as the pipeline's
        v = self.transformer(
            hidden_states=x_t, timestep=timestep, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
        return self.forward_process.prediction(v, x_t, t)

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": "StableDiffusion3Model",
            "model": self.name,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameterization": "flow",
            "flow_error": self.forward_process.error,
            "t5": self.pipe.text_encoder_3 is not None,
            **self.own_weights,
        }


def is_sd3_folder(path: Path) -> bool:
    return pipeline_class(path) == "StableDiffusion3Pipeline"


register_family(
    Family(
        "sd3",
        is_sd3_folder,
        StableDiffusion3Model.from_pretrained,
        options=frozenset({"image_size", "transformer", "lora", "lora_scale", "no_t5", "flow_error"}),
        description="Stable Diffusion 3 / 3.5 (rectified flow, MMDiT; CLIP x2 + optional T5), 1024 px",
    )
)

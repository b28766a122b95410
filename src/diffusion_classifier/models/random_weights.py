"""Published denoiser architectures with random weights: model calls of the real shapes and cost, no download.

Only the denoiser network is built (no VAE, no text encoder): the bench command times its calls. Configs are
the published config.json files' architecture fields (stabilityai/stable-diffusion-2-base/unet,
runwayml/stable-diffusion-v1-5/unet, facebook/DiT-XL-2-256/transformer, stabilityai/stable-diffusion-xl-base-1.0/unet:
2,567,463,684 parameters, stabilityai/stable-diffusion-3-medium-diffusers/transformer: 2,028,328,000);
`tiny` is the tests' tiny SD UNet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..core.forward_process import RectifiedFlow
from ..errors import UserInputError
from ._diffusers import pack_pooled, unpack_pooled
from .base import DiffusionAdapter
from .gaussian import scaled_linear_alphas_cumprod

SD_UNET_BLOCKS: dict[str, Any] = {
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "in_channels": 4,
    "out_channels": 4,
    "sample_size": 64,  # 512 px images, 64x64 latents
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}


@dataclass(frozen=True)
class Architecture:
    """A denoiser: its kind and diffusers config. Kinds: "unet" (UNet2DConditionModel), "sdxl" (the same with
    pooled + time_ids conditioning), "dit" (DiTTransformer2DModel), "sd3" (SD3Transformer2DModel, rectified flow)."""

    kind: Literal["unet", "sdxl", "dit", "sd3"]
    config: dict[str, Any] = field(default_factory=dict)
    text_length: int = 77  # CLIP prompts are padded to 77 tokens (SD3: 77 CLIP + 256 T5)
    pooled_dim: int = 0  # SDXL / SD3: the pooled text embedding's size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config["sample_size"]
        return (self.config["in_channels"], s, s)

    @property
    def text_dim(self) -> int:
        return self.config.get("cross_attention_dim") or self.config["joint_attention_dim"]


ARCHITECTURES: dict[str, Architecture] = {
    "sd2-base": Architecture(
        "unet",
        {
            **SD_UNET_BLOCKS,
            "attention_head_dim": [5, 10, 20, 20],
            "cross_attention_dim": 1024,
            "use_linear_projection": True,
        },
    ),
    "sd15": Architecture("unet", {**SD_UNET_BLOCKS, "attention_head_dim": 8, "cross_attention_dim": 768}),
    "dit-xl-2-256": Architecture(
        "dit",
        {
            "num_layers": 28,
            "num_attention_heads": 16,
            "attention_head_dim": 72,
            "in_channels": 4,
            "out_channels": 8,  # learned sigma: eps and the variance, 4 channels each
            "patch_size": 2,
            "sample_size": 32,  # 256 px images
            "num_embeds_ada_norm": 1000,
            "activation_fn": "gelu-approximate",
            "attention_bias": True,
            "norm_type": "ada_norm_zero",
            "norm_elementwise_affine": False,
        },
    ),
    "sdxl-base": Architecture(
        "sdxl",
        {
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [320, 640, 1280],
            "transformer_layers_per_block": [1, 2, 10],
            "attention_head_dim": [5, 10, 20],
            "layers_per_block": 2,
            "in_channels": 4,
            "out_channels": 4,
            "sample_size": 128,  # 1024 px images
            "cross_attention_dim": 2048,  # CLIP ViT-L (768) + OpenCLIP bigG (1280) tokens, concatenated
            "addition_embed_type": "text_time",
            "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + the 1280-d pooled embedding
            "use_linear_projection": True,
            "norm_num_groups": 32,
            "act_fn": "silu",
            "flip_sin_to_cos": True,
            "freq_shift": 0,
        },
        pooled_dim=1280,
    ),
    "sd3-medium": Architecture(
        "sd3",
        {
            "sample_size": 128,  # 1024 px images
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 192,
        },
        text_length=77 + 256,
        pooled_dim=2048,
    ),
    "tiny": Architecture(
        "unet",
        {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [16, 32],
            "layers_per_block": 1,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            "attention_head_dim": 4,
            "norm_num_groups": 8,
        },
    ),
}


def build_network(arch: Architecture) -> torch.nn.Module:
    """The architecture's diffusers network with freshly initialised (random) weights (on the current device:
    under torch.device("meta") nothing is allocated)."""
    from diffusers import DiTTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    classes = {"unet": UNet2DConditionModel, "sdxl": UNet2DConditionModel, "dit": DiTTransformer2DModel}
    return classes.get(arch.kind, SD3Transformer2DModel)(**arch.config)


class RandomWeightsModel(DiffusionAdapter):
    """The denoiser of a published architecture, randomly initialised (seeded); conditions are random rows."""

    denoiser_attr = "net"

    def __init__(
        self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ):
        if name not in ARCHITECTURES:
            raise UserInputError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
        self.name, self.arch, self.seed = name, ARCHITECTURES[name], seed
        self.conditioning = "class" if self.arch.kind == "dit" else "text"
        torch.manual_seed(seed)
        with torch.device(device):  # initialised where it runs: seconds on a GPU, not a minute on the CPU
            self.net = build_network(self.arch).to(dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype
        if self.conditioning == "class":
            self.class_names = [str(i) for i in range(self.arch.config["num_embeds_ada_norm"])]
        self._alphas_cumprod = scaled_linear_alphas_cumprod()
        if self.arch.kind == "sd3":
            self.forward_process = RectifiedFlow()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.arch.latent_shape

    def encode(self, image: Any) -> torch.Tensor:
        raise UserInputError("a random-weights model has no VAE: it cannot encode images")

    def condition(self, conditions: list[str]) -> torch.Tensor:
        """Text: random prompt embeddings (77 x cross_attention_dim), seeded; class: ids 0, 1, 2, ..."""
        n = len(conditions)
        if self.conditioning == "class":
            return torch.arange(n, device=self.device) % len(self.class_names or [0])
        g = torch.Generator().manual_seed(self.seed)
        rows = torch.randn(n, self.arch.text_length, self.arch.text_dim, generator=g)
        if self.arch.pooled_dim:  # the pooled embedding rides in extra rows, as in the SDXL and SD3 adapters
            rows = pack_pooled(rows, torch.randn(n, self.arch.pooled_dim, generator=g))
        return rows.to(self.device, self.dtype)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        kind = self.arch.kind
        if kind == "unet":
            return self.net(x_t, t, encoder_hidden_states=cond).sample
        if kind == "dit":
            out = self.net(x_t, timestep=t, class_labels=cond).sample
            return torch.split(out, x_t.shape[1], dim=1)[0]  # the eps half of the learned-sigma output
        embeds, pooled = unpack_pooled(cond, self.arch.pooled_dim)
        if kind == "sdxl":
            s = self.arch.config["sample_size"] * 8.0  # time_ids of a square image at the native size
            time_ids = torch.tensor([s, s, 0, 0, s, s], device=x_t.device, dtype=embeds.dtype).expand(len(x_t), -1)
            added = {"text_embeds": pooled, "time_ids": time_ids}
            return self.net(x_t, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        process = self.forward_process
        v = self.net(x_t, timestep=process.model_timestep(t), encoder_hidden_states=embeds, pooled_projections=pooled)
        return process.prediction(v.sample, x_t, t)

    def describe(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.net.parameters())
        return {"adapter": "RandomWeightsModel", "model": self.name, "parameters": params, "seed": self.seed}

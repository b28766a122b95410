"""Published denoiser architectures with random weights: model calls of the real shapes and cost, no download.

Only the denoiser network is built (no VAE, no text encoder): the bench command times its calls. Configs are
the published config.json files' architecture fields (stabilityai/stable-diffusion-2-base/unet,
runwayml/stable-diffusion-v1-5/unet, facebook/DiT-XL-2-256/transformer); `tiny` is the tests' tiny SD UNet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import UserInputError
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
    """A denoiser: its diffusers class ("unet": UNet2DConditionModel, "dit": DiTTransformer2DModel) and config."""

    kind: Literal["unet", "dit"]
    config: dict[str, Any] = field(default_factory=dict)
    text_length: int = 77  # CLIP prompts are padded to 77 tokens

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config["sample_size"]
        return (self.config["in_channels"], s, s)


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
    """The architecture's diffusers network with freshly initialised (random) weights."""
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    cls = UNet2DConditionModel if arch.kind == "unet" else DiTTransformer2DModel
    return cls(**arch.config)


class RandomWeightsModel(DiffusionAdapter):
    """The denoiser of a published architecture, randomly initialised (seeded); conditions are random rows."""

    denoiser_attr = "net"

    def __init__(
        self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ):
        if name not in ARCHITECTURES:
            raise UserInputError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
        self.name, self.arch, self.seed = name, ARCHITECTURES[name], seed
        self.conditioning = "text" if self.arch.kind == "unet" else "class"
        torch.manual_seed(seed)
        with torch.device(device):  # initialised where it runs: seconds on a GPU, not a minute on the CPU
            self.net = build_network(self.arch).to(dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype
        if self.conditioning == "class":
            self.class_names = [str(i) for i in range(self.arch.config["num_embeds_ada_norm"])]
        self._alphas_cumprod = scaled_linear_alphas_cumprod()

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
        rows = torch.randn(n, self.arch.text_length, self.arch.config["cross_attention_dim"], generator=g)
        return rows.to(self.device, self.dtype)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.arch.kind == "unet":
            return self.net(x_t, t, encoder_hidden_states=cond).sample
        out = self.net(x_t, timestep=t, class_labels=cond).sample
        return torch.split(out, x_t.shape[1], dim=1)[0]  # the eps half of the learned-sigma output

    def describe(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.net.parameters())
        return {"adapter": "RandomWeightsModel", "model": self.name, "parameters": params, "seed": self.seed}

"""The short names users type (`sdxl`, `sd3.5-medium`, ...) and the hub ids they stand for: the one alias table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Alias:
    """A short model name: its hub id and the family (models.FAMILIES) that loads it."""

    hub_id: str
    family: str
    note: str = ""


ALIASES: dict[str, Alias] = {
    "sd15": Alias("stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion", "SD 1.5, 512 px"),
    "sd2": Alias("stabilityai/stable-diffusion-2", "stable-diffusion", "SD 2.0, 768 px, v-prediction"),
    "sd2-base": Alias("stabilityai/stable-diffusion-2-base", "stable-diffusion", "SD 2.0 base, 512 px: the paper's"),
    "sdxl": Alias("stabilityai/stable-diffusion-xl-base-1.0", "sdxl", "SDXL base 1.0, 1024 px"),
    "sd3-medium": Alias("stabilityai/stable-diffusion-3-medium-diffusers", "sd3", "SD3 medium (2B), 1024 px, gated"),
    "sd3.5-medium": Alias("stabilityai/stable-diffusion-3.5-medium", "sd3", "SD3.5 medium (2.5B), 1024 px, gated"),
    "sd3.5-large": Alias("stabilityai/stable-diffusion-3.5-large", "sd3", "SD3.5 large (8B), 1024 px, gated"),
    "flux-schnell": Alias("black-forest-labs/FLUX.1-schnell", "flux", "FLUX.1 schnell (12B)"),
    "flux-dev": Alias("black-forest-labs/FLUX.1-dev", "flux", "FLUX.1 dev (12B), gated"),
    "pixart-alpha": Alias("PixArt-alpha/PixArt-XL-2-1024-MS", "pixart", "PixArt-alpha XL/2, 1024 px"),
    "pixart-sigma": Alias("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "pixart", "PixArt-Sigma XL/2, 1024 px"),
    "dit-xl-2-256": Alias("facebook/DiT-XL-2-256", "dit", "DiT-XL/2 ImageNet classes, 256 px"),
    "dit-xl-2-512": Alias("facebook/DiT-XL-2-512", "dit", "DiT-XL/2 ImageNet classes, 512 px"),
}

"""Class-conditional models: a pixel-space diffusers UNet2DModel with class embeddings, and DiT (latent, learned sigma).

Both condition on class ids; condition() maps class names (or integer ids given as strings) to ids.

Folder layouts:
- UNet: unet/ (UNet2DModel, num_class_embeds set), scheduler/ (DDPMScheduler config: alpha_bar comes
  from it) and classifier_config.json (class_names, image_size, channels, optional default_schedule).
  This is what `diffusion-classifier train` writes and what builtin:mnist holds.
- DiT: a DiTPipeline folder (model_index.json, transformer/, vae/, scheduler/), e.g. facebook/DiT-XL-2-256;
  class names come from the pipeline's id2label. By default the adapter runs the original DiT network
  (facebookresearch/DiT models.py) that the published numbers come from, not diffusers' port of it
  (use_original_dit); dit_network="diffusers" keeps the port as it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image

from ..core.forward_process import DDPMProcess, ddpm_from_float64
from ..core.schedules import get_schedule, schedule_from_dict
from ..data.images import center_crop, check_aspect, resize_short_side, to_tensor
from ..data.prompts import shown
from ..errors import UserInputError
from ..files import read_json_object
from ..names import DIT_NETWORKS
from . import Family, register_family
from ._diffusers import load_failed, pipeline_class, split_learned_sigma, vae_latent
from .base import DiffusionAdapter

UNET_CONFIG = "classifier_config.json"


# ---- labels -----------------------------------------------------------------------------------------


def label_index(class_names: list[str], aliases: dict[str, int] | None = None) -> dict[str, int]:
    """Name -> class id for every class name, then every alias not already taken."""
    index = {name: i for i, name in enumerate(class_names)}
    for name, i in (aliases or {}).items():
        index.setdefault(name, i)
    return index


def class_ids(conditions: list[str], index: dict[str, int], num_classes: int) -> torch.Tensor:
    """Class ids for labels given by name (or alias) or as an integer id; unknown labels are a UserInputError."""
    ids = []
    for c in conditions:
        key = str(c).strip()
        if key in index:
            ids.append(index[key])
        elif re.fullmatch(r"[0-9]+", key) and int(key) < num_classes:  # ASCII digits: int("³") fails
            ids.append(int(key))
        else:
            some = ", ".join(shown(n) for n in list(index)[:5])
            raise UserInputError(
                f"unknown class {shown(str(c))}: this model knows {num_classes} classes (e.g. {some}); "
                f"give a class name or an id 0..{num_classes - 1}"
            )
    return torch.tensor(ids, dtype=torch.long)


def check_image_size(image_size: int | None, native: int, what: str) -> None:
    if image_size is not None and image_size != native:
        raise UserInputError(f"--image-size {image_size}: {what} works at {native} px only; leave --image-size out")


# ---- preprocessing ------------------------------------------------------------------------------------


def adm_center_crop(img: Image.Image, size: int) -> Image.Image:
    """ADM/DiT preprocessing (SPEC.md §3): BOX-halve while the short side >= 2 size, bicubic resize, center crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def load_alphas_cumprod(path: Path) -> torch.Tensor:
    """alpha_bar of the folder's scheduler config, via DDPMScheduler (it reads any beta-based scheduler's config)."""
    from diffusers import DDPMScheduler

    config = DDPMScheduler.load_config(path, subfolder="scheduler")
    return DDPMScheduler.from_config(config).alphas_cumprod.float().cpu()


def load_alphas_cumprod_float64(path: Path) -> torch.Tensor:
    """alpha_bar in float64 as ADM/DiT's GaussianDiffusion computes it (numpy float64 linear betas, scaled to
    1000 steps) for a linear beta schedule; other schedules fall back to DDPMScheduler's float32 values."""
    from diffusers import DDPMScheduler

    config = DDPMScheduler.load_config(path, subfolder="scheduler")
    if config.get("beta_schedule", "linear") != "linear" or config.get("trained_betas") is not None:
        return load_alphas_cumprod(path).double()
    T = int(config.get("num_train_timesteps", 1000))
    betas = np.linspace(config.get("beta_start", 1e-4), config.get("beta_end", 2e-2), T, dtype=np.float64)
    return torch.from_numpy(np.cumprod(1.0 - betas))


def checked_config(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """classifier_config.json with its fields of the right types: one clear line, not a ValueError in int()."""
    for key in ("image_size", "channels"):
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{where}: {key} must be a positive integer, got {value!r}; fix the file")
    names = config.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(c, (str, int)) for c in names):
        raise UserInputError(f"{where}: class_names must be a list of names, got {names!r:.60}; fix the file")
    return config


# ---- UNet2DModel with class embeddings (pixel space) ----------------------------------------------------


class ClassUNetModel(DiffusionAdapter):
    """x0 = the image itself in [-1, 1] (grayscale when the model has one channel); cond = class ids."""

    conditioning = "class"
    denoiser_attr = "unet"

    def __init__(self, unet, alphas_cumprod: torch.Tensor, config: dict[str, Any], name: str = ""):
        self.unet, self.name, self.config = unet, name, config
        self.device, self.dtype = unet.device, unet.dtype
        self._alphas_cumprod = alphas_cumprod
        self.image_size = int(config.get("image_size", unet.config.sample_size))
        self.channels = int(config.get("channels", unet.config.in_channels))
        n = unet.config.num_class_embeds
        self.class_names = [str(c) for c in config.get("class_names", range(n))]
        if len(self.class_names) != n:
            raise UserInputError(f"{name}: {len(self.class_names)} class names for a model with {n} classes")
        self._index = label_index(self.class_names)
        spec = config.get("default_schedule")
        if spec:  # the schedule this model runs when none is named (config.default_schedule resolves it)
            sched, loss = schedule_from_dict(spec, f"{name}/{UNET_CONFIG} default_schedule")
            self.default_schedule = (sched, loss or "l2")

    @classmethod
    def from_pretrained(
        cls, path: Path, dtype: torch.dtype, device: torch.device, image_size: int | None = None, **_: Any
    ) -> ClassUNetModel:
        from diffusers import UNet2DModel

        try:
            config = checked_config(read_json_object(path / UNET_CONFIG), path / UNET_CONFIG)
            unet = UNet2DModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, use_safetensors=True)
            alphas_cumprod = load_alphas_cumprod(path)
        except (OSError, ValueError) as exc:
            raise load_failed("a class-conditional UNet", path, exc) from None
        if unet.config.num_class_embeds is None:
            raise UserInputError(f"{path}/unet has no class embeddings (num_class_embeds); it cannot classify")
        check_image_size(image_size, int(config.get("image_size", unet.config.sample_size)), str(path))
        unet.to(device).eval().requires_grad_(False)
        return cls(unet, alphas_cumprod, config, name=str(path))

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def encode(self, image: Any) -> torch.Tensor:
        img = self.open_image(image).convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.image_size, self.image_size):
            img = center_crop(resize_short_side(img, self.image_size), self.image_size)
        return to_tensor(img, self.channels)

    def condition(self, conditions: list[str]) -> torch.Tensor:
        return class_ids(conditions, self._index, len(self.class_names)).to(self.device)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, class_labels=cond).sample

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": "ClassUNetModel",
            "model": self.name,
            "classes": len(self.class_names),
            "image_size": self.image_size,
            "channels": self.channels,
            "parameters": sum(p.numel() for p in self.unet.parameters()),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def is_class_unet_folder(path: Path) -> bool:
    return (path / UNET_CONFIG).is_file() and (path / "unet" / "config.json").is_file()


# ---- DiT (latent space, learned sigma) ------------------------------------------------------------------


def dit_labels(id2label: dict[str, str] | None, num_classes: int) -> tuple[list[str], dict[str, int]]:
    """Class names (the full id2label strings, or ids) and the aliases: each comma-separated synonym."""
    if not id2label:
        return [str(i) for i in range(num_classes)], {}
    names = [str(id2label.get(str(i), i)) for i in range(num_classes)]
    aliases = {}
    for i, name in enumerate(names):
        for synonym in name.split(","):
            aliases.setdefault(synonym.strip(), i)  # the first class with a synonym keeps it (e.g. "crane")
    return names, aliases


#: What DiTModel runs: "original" the facebookresearch/DiT network (the published numbers), "diffusers" the port.
DiTNetwork = Literal["original", "diffusers"]
assert get_args(DiTNetwork) == DIT_NETWORKS  # the CLI offers names.DIT_NETWORKS before torch loads


def check_dit_network(network: str) -> None:
    if network not in DIT_NETWORKS:
        raise UserInputError(f"unknown DiT network {network!r}; choose one of {', '.join(DIT_NETWORKS)}")


def use_original_dit(transformer) -> None:
    """Make diffusers' DiTTransformer2DModel compute the original DiT network (facebookresearch/DiT models.py).

    The port differs from the original in two places; everything else (patch and position embeddings,
    adaLN-Zero, attention, tanh-GELU MLP, final layer, unpatchify) computes the same:
    1. TimestepEmbedder: frequencies exp(-ln(10^4) k / half), k < half = 128; the port's Timesteps uses
       downscale_freq_shift=1, i.e. / (half - 1): every frequency but the first is slightly higher.
    2. DiTBlock.norm2 (before the MLP): LayerNorm eps 1e-6; the port's norm3 takes norm_eps (1e-5 by default).
    Each block carries its own copy of the embedders (block 0's also feeds the final layer): all are patched.
    """
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
        block.norm3.eps = 1e-6


class DiTModel(DiffusionAdapter):
    """x0 = VAE posterior mean x scaling_factor of the ADM-cropped image; eps = the first C output channels.

    The default schedule is the published DiT protocol (core/schedules.py "dit"). Loaded in float32 (the default),
    the fast path keeps float32 without TF32 matmuls, as the official DiT script runs; --dtype float16 for speed.
    """

    conditioning = "class"
    denoiser_attr = "transformer"

    def __init__(
        self,
        transformer,
        vae,
        alphas_cumprod: torch.Tensor,
        id2label: dict | None = None,
        name: str = "",
        network: DiTNetwork = "original",
    ):
        check_dit_network(network)
        if network == "original":
            use_original_dit(transformer)
        self.transformer, self.vae, self.name, self.network = transformer, vae, name, network
        self.device, self.dtype = transformer.device, transformer.dtype
        self._alphas_cumprod = alphas_cumprod.float()
        self._process = ddpm_from_float64(alphas_cumprod)  # DiT's GaussianDiffusion: float64 coefficients
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = transformer.config.sample_size * self.vae_scale_factor
        n = transformer.config.num_embeds_ada_norm
        self.class_names, aliases = dit_labels(id2label, n)
        self._index = label_index(self.class_names, aliases)
        self.default_schedule = get_schedule("dit")  # the published protocol: what runs when none is named

    @classmethod
    def from_pretrained(
        cls,
        path: Path,
        dtype: torch.dtype,
        device: torch.device,
        image_size: int | None = None,
        dit_network: DiTNetwork = "original",
        **_: Any,
    ) -> DiTModel:
        from diffusers import AutoencoderKL, DiTTransformer2DModel

        check_dit_network(dit_network)  # before the slow load
        try:
            index = read_json_object(path / "model_index.json")
            kw = {"torch_dtype": dtype, "use_safetensors": True}
            transformer = DiTTransformer2DModel.from_pretrained(path, subfolder="transformer", **kw)
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
            alphas_cumprod = load_alphas_cumprod_float64(path)
        except (OSError, ValueError) as exc:
            raise load_failed("DiT", path, exc) from None
        for m in (transformer, vae):
            m.to(device).eval().requires_grad_(False)
        model = cls(transformer, vae, alphas_cumprod, index.get("id2label"), name=str(path), network=dit_network)
        check_image_size(image_size, model.image_size, str(path))
        return model

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def forward_process(self) -> DDPMProcess:
        return self._process

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.transformer.config.sample_size
        return (self.transformer.config.in_channels, s, s)

    @property
    def fast_overrides(self) -> dict[str, Any]:
        """Loaded in float32, the fast path keeps the official float32 arithmetic (no TF32 matmuls)."""
        return {"dtype": "float32", "tf32": False} if self.dtype == torch.float32 else {}

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.transformer, "vae": self.vae}

    def encode(self, image: Any) -> torch.Tensor:
        # RGB first, then the ADM crop: the official DiT eval's transform has no RGB step; its datasets
        # (torchvision ImageFolder's loader) convert each image to RGB when they open it
        img = self.open_image(image).convert("RGB")
        check_aspect(img.size, self.image_size)
        return vae_latent(self.vae, to_tensor(adm_center_crop(img, self.image_size)), shift=False)

    def condition(self, conditions: list[str]) -> torch.Tensor:
        return class_ids(conditions, self._index, len(self.class_names)).to(self.device)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.transformer(x_t, timestep=t, class_labels=cond).sample
        return split_learned_sigma(out, x_t.shape[1])

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": "DiTModel",
            "model": self.name,
            "network": self.network,
            "classes": len(self.class_names),
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def is_dit_folder(path: Path) -> bool:
    return pipeline_class(path) == "DiTPipeline"


register_family(
    Family(
        "class-unet",
        is_class_unet_folder,
        ClassUNetModel.from_pretrained,
        description="class-conditional pixel UNet2DModel (epsilon), e.g. builtin:mnist",
    )
)
register_family(
    Family(
        "dit",
        is_dit_folder,
        DiTModel.from_pretrained,
        options=frozenset({"image_size", "dit_network"}),
        description="DiT-XL/2, ImageNet classes (epsilon, learned sigma), 256 / 512 px",
    )
)

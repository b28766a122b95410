"""Training a small class-conditional pixel-space UNet on the MNIST training split (the bundled builtin:mnist).

Notation: x0 is a digit scaled to [-1, 1], t ~ U{0..T-1}, eps ~ N(0, I),
x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps; the loss is ||eps - eps_theta(x_t, t, y)||^2.
The saved folder (unet/, scheduler/, classifier_config.json) is what models/class_conditional.py loads.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.mnist import CLASS_NAMES, train_split
from ..errors import UserInputError
from .config import TrainConfig

CONFIG_NAME = "classifier_config.json"


def build_unet(cfg: TrainConfig, image_size: int = 28, num_classes: int = 10):
    """A class-conditional diffusers UNet2DModel without attention (attention costs more than it gives at 28 px)."""
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=num_classes,
    )


def build_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to max_shift pixels in x and y, the border filled with background (-1)."""
    if max_shift == 0:
        return x
    B, _, H, W = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + H, dx[i] : dx[i] + W] for i in range(B)])


def load_unet(folder: str | Path):
    """The UNet of a model folder this module saved (safetensors only)."""
    from diffusers import UNet2DModel

    path = Path(folder) / "unet"
    if not path.is_dir():
        raise UserInputError(f"--init-from {folder}: no unet/ folder there; give a folder written by train")
    return UNet2DModel.from_pretrained(path, use_safetensors=True)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def save_model(out: Path, unet, scheduler, cfg: TrainConfig, extra: dict) -> None:
    """The folder layout the class-conditional adapter loads: unet/, scheduler/, classifier_config.json."""
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    config = {
        "class_names": CLASS_NAMES,
        "image_size": unet.config.sample_size,
        "channels": unet.config.in_channels,
        "default_schedule": {"name": "racing", "params": {"alpha": 0.01}, "loss": "l2"},  # docs/mnist_model.md
        "training": {**asdict(cfg), **extra},
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def train(out: str | Path, cfg: TrainConfig, device: str = "cpu", progress: bool = True) -> Path:
    """Train on the 4,000 training digits and save the EMA weights to out; returns the folder."""
    import copy

    if cfg.steps < 1 or cfg.batch_size < 1:
        raise UserInputError("--steps and --batch-size must be positive")
    out = Path(out)
    torch.manual_seed(cfg.seed)  # the initial weights
    gen = torch.Generator().manual_seed(cfg.seed)  # data order, shifts, t and eps
    data = torch.from_numpy(train_split().images).float().div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, 28, 28)
    labels = torch.from_numpy(train_split().labels)
    unet, scheduler = build_unet(cfg).to(device), build_scheduler(cfg)
    if cfg.init_from is not None:
        unet.load_state_dict(load_unet(cfg.init_from).state_dict())
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    alpha_bar = scheduler.alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order, pos, began = torch.randperm(len(data), generator=gen), 0, time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="training", file=sys.stderr, disable=not progress)
    for step in bar:
        if pos + cfg.batch_size > len(order):  # a new epoch: a new permutation
            order, pos = torch.randperm(len(data), generator=gen), 0
        idx, pos = order[pos : pos + cfg.batch_size], pos + cfg.batch_size
        x0 = random_shift(data[idx], cfg.max_shift, gen)
        t = torch.randint(0, cfg.num_train_timesteps, (len(idx),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = unet(x_t.to(device), t.to(device), class_labels=labels[idx].to(device)).sample
        loss = F.mse_loss(pred, eps.to(device))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))  # short EMA early on
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_model(out, ema, scheduler, cfg, {"steps_done": step + 1})
    bar.close()
    save_model(out, ema, scheduler, cfg, {"steps_done": cfg.steps, "seconds": round(time.perf_counter() - began)})
    return out

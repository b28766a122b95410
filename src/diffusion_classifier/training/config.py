"""The training run's settings (TrainConfig), apart from train.py so that `train --help` shows the defaults
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; saved in classifier_config.json beside the weights."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3  # high for Adam, fine for a 0.6 M-parameter UNet with warmup and cosine decay
    warmup: int = 200
    min_lr_ratio: float = 0.05  # the cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    max_shift: int = 1  # random shifts of up to this many pixels: cheap augmentation for 4,000 digits
    seed: int = 0
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # ~0.64 M parameters: fast enough to classify on a CPU
    layers_per_block: int = 1
    norm_num_groups: int = 8
    beta_schedule: str = "linear"  # DDPM's betas 1e-4..0.02, the usual choice for small pixel-space models
    num_train_timesteps: int = 1000
    save_every: int = 0  # also save the EMA weights every this many steps (0: only at the end)
    init_from: str | None = None  # continue from a saved model's (EMA) weights instead of a random start

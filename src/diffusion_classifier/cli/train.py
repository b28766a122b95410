"""`diffusion-classifier train`: train the small class-conditional MNIST model (how builtin:mnist was made)."""

from __future__ import annotations

import argparse
import sys

from ..files import check_out_dir
from ..training.config import TrainConfig
from .options import add_seed_option, device_arg, non_negative_int, positive_float, positive_int
from .rules import show_progress

DEFAULTS = TrainConfig()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a class-conditional UNet on the MNIST training split",
        description="Train the small class-conditional UNet (how builtin:mnist was made) on the 4,000 MNIST "
        "training digits, with an EMA of the weights; writes a model folder that --model accepts "
        "(docs/mnist_model.md).",
    )
    p.add_argument("--out", required=True, help="folder to write the model to (unet/, scheduler/, config)")
    p.add_argument(
        "--steps", type=positive_int, default=DEFAULTS.steps, help=f"optimizer steps (default {DEFAULTS.steps})"
    )
    add_seed_option(p, default=DEFAULTS.seed, what="seed of the weights, the data order and the noise")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULTS.batch_size,
        help=f"images per step (default {DEFAULTS.batch_size})",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=DEFAULTS.lr,
        help=f"peak learning rate, warmup then cosine (default {DEFAULTS.lr})",
    )
    p.add_argument(
        "--max-shift",
        type=non_negative_int,
        default=DEFAULTS.max_shift,
        help=f"random shift augmentation in pixels (default {DEFAULTS.max_shift})",
    )
    p.add_argument("--init-from", default=None, help="continue from the weights of a model folder saved by train")
    p.add_argument(
        "--warmup",
        type=non_negative_int,
        default=DEFAULTS.warmup,
        help=f"learning-rate warmup steps (default {DEFAULTS.warmup})",
    )
    p.add_argument(
        "--save-every",
        type=non_negative_int,
        default=0,
        help="also save the EMA weights every N steps (default 0: at the end only)",
    )
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_dir(args.out)  # before training: weights that cannot be saved are lost
    from ..models import resolve_device
    from ..training.train import train

    cfg = TrainConfig(
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        max_shift=args.max_shift,
        save_every=args.save_every,
        warmup=args.warmup,
        init_from=args.init_from,
    )
    out = train(args.out, cfg, device=resolve_device(args.device), progress=show_progress(args))
    if not args.quiet:
        print(f"saved {out}", file=sys.stderr)
    return 0

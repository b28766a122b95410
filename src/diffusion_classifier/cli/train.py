"""`diffusion-classifier train`: train the small class-conditional MNIST model (how builtin:mnist was made)."""

from __future__ import annotations

import argparse
import sys

from ..files import check_out_dir
from ..training import TrainConfig, train

DEFAULTS = TrainConfig()


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a class-conditional UNet on the MNIST training split")
    p.add_argument("--out", required=True, help="folder to write the model to (unet/, scheduler/, config)")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"optimizer steps (default {DEFAULTS.steps})")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of weights, data order and noise")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate (warmup, then cosine)")
    p.add_argument("--max-shift", type=int, default=DEFAULTS.max_shift, help="random shift augmentation, pixels")
    p.add_argument("--init-from", default=None, help="continue from the weights of a model folder saved by train")
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup, help="learning-rate warmup steps")
    p.add_argument("--save-every", type=int, default=0, help="also save the EMA weights every N steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_dir(args.out)  # before training: weights that cannot be saved are lost
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
    out = train(args.out, cfg, device=args.device, progress=True)
    print(f"saved {out}", file=sys.stderr)
    return 0

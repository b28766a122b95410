"""How full would the model calls be one image at a time? What the packer (packer.py) saves.

Without the packer each schedule round of one image hands the model n (label, trial) pairs, which
become ceil(n / B) calls of batch size B. Packing pairs of several images into shared calls could at best
fill every call: sum(n) / B calls. This script runs each schedule on the analytic Gaussian model (the
round sizes depend only on which candidates survive, so a model whose errors separate the classes gives
representative rounds) and prints, per batch size, the calls per image now, the calls with ideal packing,
and the fill of the calls now. A fill near 100 % means packing cannot pay, whatever the hardware.

    python benchmarks/packing.py
    python benchmarks/packing.py --images 20 --json
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from diffusion_classifier.core.estimator import ErrorLedger, model_error_fn
from diffusion_classifier.core.noise import NoiseBank
from diffusion_classifier.core.schedules import PUBLISHED, Racing, Staged
from diffusion_classifier.models.gaussian import GaussianClassModel

SCHEDULES = {  # name -> (schedule, classes)
    "cifar10 staged": (PUBLISHED["cifar10"][0], 10),
    "pets staged": (PUBLISHED["pets"][0], 37),
    "flowers staged": (PUBLISHED["flowers"][0], 102),
    "objectnet staged": (PUBLISHED["objectnet"][0], 113),
    "racing (10 classes)": (Racing(), 10),
    "racing (102 classes)": (Racing(), 102),
}
BATCH_SIZES = (32, 64, 128, 256)


def round_sizes(schedule, classes: int, images: int, seed: int = 0) -> list[list[int]]:
    """Pairs per round (one ledger.evaluate call) for each of `images` Gaussian images."""
    gen = torch.Generator().manual_seed(seed)
    model = GaussianClassModel(torch.randn(classes, 1, 4, 4, generator=gen) * 0.6, std=1.0)
    noise = NoiseBank(model.latent_shape, seed=seed)
    cond = model.condition(model.class_names)
    out = []
    for y in range(images):
        x0 = model.sample(torch.tensor([y % classes]), generator=gen)[0]
        sizes: list[int] = []
        inner = model_error_fn(model, x0, cond, noise, "l2", batch_size=4096)

        def record(pairs, inner=inner, sizes=sizes):
            sizes.append(len(pairs))
            return inner(pairs)

        schedule.run(ErrorLedger(record, classes), model.num_train_timesteps)
        out.append(sizes)
    return out


def fill_table(rounds: list[list[int]], batch_sizes=BATCH_SIZES) -> list[dict]:
    pairs = sum(sum(r) for r in rounds)
    rows = []
    for b in batch_sizes:
        now = sum(math.ceil(n / b) for r in rounds for n in r)
        rows.append(
            {
                "batch_size": b,
                "pairs_per_image": pairs / len(rounds),
                "calls_per_image": now / len(rounds),
                "packed_calls_per_image": pairs / b / len(rounds),
                "fill": pairs / (now * b),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {name: fill_table(round_sizes(s, k, args.images)) for name, (s, k) in SCHEDULES.items()}
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| schedule | batch | pairs/image | calls/image now | with ideal packing | fill now |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        for r in rows:
            print(
                f"| {name} | {r['batch_size']} | {r['pairs_per_image']:.0f} | {r['calls_per_image']:.1f} "
                f"| {r['packed_calls_per_image']:.1f} | {100 * r['fill']:.1f} % |"
            )


if __name__ == "__main__":
    assert isinstance(PUBLISHED["cifar10"][0], Staged)
    main()

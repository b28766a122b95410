"""Rows per second of the bundled MNIST UNet on the CPU: eager against channels_last + torch.compile.

Why `--fast` does not compile on the CPU by default: the gain depends on the batch (one racing round of
10 labels is 50 rows, padded to a static 64), measured here in one process, same inputs.

    OMP_NUM_THREADS=1 python benchmarks/cpu_compile.py --batch 50 500
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusion_classifier.models import load_adapter
from diffusion_classifier.models.fast import bucket


def rows_per_s(net, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, rows: int, iters: int) -> float:
    """Real rows per second of net on (x, t, c), whose batch may be padded beyond rows."""
    with torch.inference_mode():
        for _ in range(2):  # warm-up (and compilation)
            net(x, t, class_labels=c)
        start = time.perf_counter()
        for _ in range(iters):
            net(x, t, class_labels=c)
        return iters * rows / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[50, 500], help="real rows per call")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    unet = load_adapter("builtin:mnist", device="cpu").unet.eval()
    fast = torch.compile(unet.to(memory_format=torch.channels_last), dynamic=False)
    g = torch.Generator().manual_seed(0)
    for rows in args.batch:
        padded = bucket(rows, 512)
        x = torch.randn(padded, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
        t, c = torch.randint(0, 1000, (padded,), generator=g), torch.randint(0, 10, (padded,), generator=g)
        eager = rows_per_s(unet, x[:rows], t[:rows], c[:rows], rows, args.iters)
        began = time.perf_counter()
        compiled = rows_per_s(fast, x.contiguous(memory_format=torch.channels_last), t, c, rows, args.iters)
        print(
            f"{torch.get_num_threads()} threads, {rows} rows (padded to {padded}): eager {eager:.0f} rows/s, "
            f"compiled {compiled:.0f} rows/s ({compiled / eager:.2f}x; warm-up incl. compiling "
            f"{time.perf_counter() - began:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()

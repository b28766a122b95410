"""`diffusion-classifier bench`: model calls per second, seconds per image and TFLOP/s, reference vs fast path."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UserInputError
from ..names import ARCHITECTURES, COMPILE_MODES, SCHEDULES
from .options import DEVICE_HELP, device_arg, positive_int
from .rules import print_json

if TYPE_CHECKING:
    from ..models.fast import FastConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure model calls per second: the reference setting vs the fast path",
        description="Time the denoiser's calls in float32 eager mode (the reference) and on the fast path "
        "(half precision, torch.compile, static shapes), settings interleaved; report calls/s, TFLOP/s and "
        "seconds per image for named schedules, and check that the fast path's errors agree (docs/performance.md).",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="hub id, local folder, or builtin:NAME (loaded in float32)")
    which.add_argument(
        "--random-weights", choices=ARCHITECTURES, help="a published denoiser architecture, random weights"
    )
    p.add_argument("--device", type=device_arg, default=None, help=DEVICE_HELP)
    p.add_argument(
        "--schedule",
        nargs="+",
        default=["cifar10"],
        help=f"seconds per image on these (the first in the table rows): {', '.join(SCHEDULES)}",
    )
    p.add_argument(
        "--labels", type=positive_int, default=None, help="labels per image (default: the schedule's dataset's)"
    )
    p.add_argument(
        "--calls-per-image", type=positive_int, default=None, help="use this count instead of the schedule's"
    )
    p.add_argument("--fast-dtype", choices=["float16", "bfloat16", "float32"], default=None)
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None, help="torch.compile mode (fast path)")
    p.add_argument("--no-compile", action="store_true", help="fast path without torch.compile")
    p.add_argument("--fast-batch-size", type=positive_int, default=None, help="the fast path's (starting) batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation happens here)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per setting and repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds, settings interleaved; the best counts")
    p.add_argument("--no-check", action="store_true", help="skip comparing the fast path's errors with float32")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def fast_config_from_args(args: argparse.Namespace, device) -> FastConfig:
    from ..models.fast import FastConfig

    overrides = {
        "dtype": args.fast_dtype,
        "compile_mode": args.compile_mode,
        "compile": False if args.no_compile else None,
        "batch_size": args.fast_batch_size,
    }
    return FastConfig.for_device(device, **{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from ..bench.throughput import bench
    from ..models import load_adapter, resolve_device
    from ..models.random_weights import RandomWeightsModel

    if args.warmup < 0 or args.iters < 1 or args.repeats < 1:
        raise UserInputError("--warmup must be at least 0, --iters and --repeats at least 1")
    device = resolve_device(args.device)
    config = fast_config_from_args(args, device)
    if args.random_weights:
        model = RandomWeightsModel(args.random_weights, device=device)
    else:
        model = load_adapter(args.model, dtype="float32", device=device)
    result = bench(
        model,
        config,
        schedules=args.schedule,
        n_labels=args.labels,
        calls_per_image=args.calls_per_image,
        warmup=args.warmup,
        iters=args.iters,
        repeats=args.repeats,
        check=not args.no_check,
    )
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"{result.device}: {result.calls_per_image} calls per image ({result.schedule}, {result.n_labels} labels)")
    print(f"{'setting':<10} {'dtype':<9} {'batch':>5} {'compile':<27} {'calls/s':>9} {'TFLOP/s':>8} {'s/image':>9}")
    for r in result.rows:
        print(
            f"{r.name:<10} {r.dtype:<9} {r.batch_size:>5} {r.compile:<27} {r.calls_per_s:>9.1f} "
            f"{r.tflops:>8.3g} {r.seconds_per_image:>9.2f}"
        )
    print(f"speedup: {result.speedup:.2f}x")
    for name, s in result.schedules.items():
        per_row = ", ".join(f"{row} {sec:.2f} s" for row, sec in s["seconds_per_image"].items())
        print(f"{name}: {s['calls_per_image']} calls per image ({s['labels']} labels): {per_row}")
    if result.agreement is not None:
        a = result.agreement
        print(
            f"fast vs float32 eager: max relative error {a.max_rel_error:.2e} over {a.labels} labels x {a.trials} "
            f"trials; same prediction on {a.predictions_agree} of {a.images} random latents; "
            f"{a.overflowed} errors overflowed (redone in float32)"
        )
    return 0


if __name__ == "__main__":  # `python -m diffusion_classifier.cli.bench ...`: without the other commands' imports
    import sys

    from . import COMMANDS, main

    COMMANDS[:] = ["bench"]  # a bare GPU machine may lack what they import (matplotlib, ...)
    raise SystemExit(main(["bench", *sys.argv[1:]]))

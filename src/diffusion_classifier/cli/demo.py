"""`diffusion-classifier demo`: classify the 1,000 held-out MNIST digits with the bundled model, offline, on CPU.

The work is demo.run_demo's (an ordinary evaluation into the report folder); this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_batch_size_option, add_seed_option, device_arg
from .rules import exit_code, print_json, show_progress


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="classify the held-out MNIST digits with the bundled model (offline, CPU)",
        description="Runs the bundled MNIST diffusion model as a zero-shot classifier on the 1,000 held-out "
        "digits and writes a report folder. Rerunning into the same folder resumes.",
    )
    p.add_argument("--out", default="demo-report", help="report folder (default demo-report/)")
    p.add_argument(
        "--limit", type=int, default=None, help="classify N test digits: the first N of a shuffle seeded by --seed"
    )
    p.add_argument("--json", action="store_true", help="print one final JSON object")
    p.add_argument("--fresh", action="store_true", help="delete an earlier demo's records in --out first")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda, cuda:N or mps")
    add_seed_option(p)
    add_batch_size_option(p, default=100)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runs.demo import run_demo

    result = run_demo(
        Path(args.out), args.limit, args.seed, args.device, args.batch_size, args.fresh, show_progress(args)
    )
    if args.json:
        print_json({k: result[k] for k in ("n", "accuracy", "calls_per_image", "seconds_per_image",
                                           "baseline_accuracy")})  # fmt: skip
    else:
        base = result["baseline_accuracy"]
        print(f"MNIST held-out digits: {result['n']} classified, accuracy {_pct(result['accuracy'])}")
        print(f"model calls per image: {result['calls_per_image']:.0f}, seconds per image: "
              f"{result['seconds_per_image']:.3f}")  # fmt: skip
        if base is not None:
            print(f"discriminative baseline on the same digits: {_pct(base)}")
        print(f"report: {result['out']}")
    return exit_code(result["n"], result["failed"])


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"

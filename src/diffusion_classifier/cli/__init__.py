"""The command line: argument parsing only; every command calls the Python API and prints.

Each subcommand is a module here with add_parser(subparsers) and run(args) -> exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import UserInputError

#: subcommand modules, in the order `--help` lists them
COMMANDS = [
    "classify",  # images among candidate labels (pipeline.py)
    "demo",  # the bundled MNIST model on its held-out digits
    "eval",  # a dataset into a resumable run directory (runs.py)
    "report",  # tables and figures of run directories (report.py, figures.py)
    "calibrate",  # timestep weights and temperature from labelled images (fitting.py)
    "winoground",  # compositional image-text matching (winoground.py)
    "match",  # the score matrix of images x captions (matching.py)
    "bench",  # throughput: reference setting vs fast path (throughput.py, fast.py)
    "train",  # the class-conditional MNIST model (training.py)
    "serve",  # the web page (web/)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusion-classifier",
        description="Zero-shot image classification with a pretrained diffusion model (Li et al., ICCV 2023).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def quiet_libraries() -> None:
    """Keep stderr for our progress and errors: no weight-loading bars or config nags from the HF libraries."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "diffusers"):
        try:
            lib = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"diffusion-classifier: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffusion-classifier: interrupted", file=sys.stderr)
        return 130

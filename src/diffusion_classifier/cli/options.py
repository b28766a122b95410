"""Options shared by several commands (model, schedule, noise, batching) and their translation to API calls."""

from __future__ import annotations

import argparse

from ..data.prompts import Candidates, read_labels_file, read_prompts_csv
from ..errors import UserInputError
from ..schedules import Full, Schedule, Staged, parse_timesteps, schedule_names


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="hub id, local folder, or builtin:NAME (e.g. builtin:mnist)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None, help="weights dtype")
    g.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    g.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the model's)")


def add_label_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labels")
    g.add_argument("--labels", nargs="+", default=None, help="candidate labels")
    g.add_argument("--labels-file", default=None, help="a file with one label per line")
    g.add_argument("--prompts-file", default=None, help="a CSV with columns prompt,classname[,classidx]")
    g.add_argument(
        "--template", default=None, help='prompt template with {} for the label (default "a photo of a {}.")'
    )


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule")
    g.add_argument("--schedule", default=None, help=f"a named schedule: {', '.join(schedule_names())}")
    g.add_argument("--to-keep", type=int, nargs="+", default=None, help="candidates kept after each stage")
    g.add_argument("--n-samples", type=int, nargs="+", default=None, help="timesteps per stage")
    g.add_argument("--timesteps", default=None, help="evaluate all labels on these: '11,311,611' or '0:1000:50'")
    g.add_argument("--loss", choices=["l2", "l1", "huber"], default=None, help="per-trial loss (default: schedule's)")
    g.add_argument("--seed", type=int, default=0, help="seed of the trial noise (default 0)")
    g.add_argument("--noise-file", default=None, help="a [N, C, h, w] noise tensor (.pt or .npy) instead of --seed")
    g.add_argument("--batch-size", type=int, default=32, help="(label, trial) pairs per model call")


def labels_from_args(args: argparse.Namespace) -> tuple[list[str] | None, Candidates | None]:
    """(labels, prompts) from --labels / --labels-file / --prompts-file; at most one may be given."""
    given = [x for x in (args.labels, args.labels_file, args.prompts_file) if x is not None]
    if len(given) > 1:
        raise UserInputError("give only one of --labels, --labels-file, --prompts-file")
    if args.prompts_file:
        return None, read_prompts_csv(args.prompts_file)
    if args.labels_file:
        return read_labels_file(args.labels_file), None
    return args.labels, None


def schedule_from_args(args: argparse.Namespace, T: int = 1000) -> str | Schedule | None:
    """A schedule name, a Staged or Full object, or None for the model's default."""
    chosen = [x for x in (args.schedule, args.timesteps, args.to_keep or args.n_samples) if x is not None and x != []]
    if len(chosen) > 1:
        raise UserInputError("give only one of --schedule, --timesteps, --to-keep/--n-samples")
    if args.timesteps is not None:
        return Full(parse_timesteps(args.timesteps, T))
    if args.to_keep or args.n_samples:
        if not (args.to_keep and args.n_samples):
            raise UserInputError("--to-keep and --n-samples go together")
        return Staged(tuple(args.n_samples), tuple(args.to_keep))
    return args.schedule


def check_batch_size(n: int) -> int:
    if n < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {n}")
    return n

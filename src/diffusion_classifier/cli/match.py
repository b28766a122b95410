"""`diffusion-classifier match`: the score matrix of images x captions, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import TYPE_CHECKING

from ..errors import UserInputError
from .options import (
    NOISE_FILE_HELP,
    add_batch_size_option,
    add_image_options,
    add_model_options,
    add_seed_option,
    check_noise_file,
    image_options_from_args,
    load_classifier,
)
from .rules import Tally, print_json, show_progress

if TYPE_CHECKING:
    from ..data.images import ImageOptions
    from ..matching.scores import MatchResult, PairScorer


def add_parser(sub) -> None:
    p = sub.add_parser(
        "match",
        help="score every image against every caption (image-text matching)",
        description="Score = minus the mean noise-prediction error over t in range(K // 2, 1000, K), the i-th "
        "timestep with noise i, the same noise for every pair (higher = better match). An image that cannot be "
        "read is reported in one line and the others are scored (exit 1).",
    )
    p.add_argument("--images", nargs="+", required=True, metavar="IMAGE", help="image files")
    p.add_argument("--captions", nargs="+", required=True, metavar="TEXT", help="captions (used as the prompts)")
    add_image_options(p)
    add_scorer_options(p, t_interval=10)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per scorer on stdout (nothing else there)")
    out.add_argument("--csv", action="store_true", help="CSV on stdout: scorer, image, then one column per caption")
    p.set_defaults(func=run)


def add_scorer_options(p: argparse.ArgumentParser, t_interval: int) -> None:
    """--model and the diffusion scoring options, and --baseline; shared with `winoground`."""
    add_model_options(p, required=False)
    g = p.add_argument_group("scoring")
    g.add_argument(
        "--t-interval",
        type=int,
        default=t_interval,
        metavar="K",
        help=f"timesteps range(K // 2, 1000, K): 1000 / K model calls per pair (default {t_interval})",
    )
    add_seed_option(g, default=None)  # None: --noise-file may replace it
    g.add_argument("--noise-file", default=None, help=NOISE_FILE_HELP)
    g.add_argument("--loss", choices=["l2", "l1", "huber"], default="l2", help="per-trial loss (default l2)")
    g.add_argument(
        "--normalize", action="store_true", help="subtract the unconditional (empty prompt) error, trial by trial"
    )
    add_batch_size_option(g)
    g.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="clip:MODEL",
        help="also score with a CLIP model (hub id or folder); repeatable; alone, it replaces --model",
    )


def scorers_from_args(args: argparse.Namespace) -> list[PairScorer]:
    """The diffusion scorer of --model (if given) first, then each --baseline."""
    from ..core.schedules import interval_grid
    from ..matching.clip_baseline import ClipMatcher, parse_baseline
    from ..matching.scores import DiffusionMatcher

    if args.model is None and not args.baseline:
        raise UserInputError("give --model (a diffusion model), --baseline clip:MODEL, or both")
    for spec in args.baseline:
        parse_baseline(spec)  # a bad spec fails before any model loads
    if args.seed is not None and args.noise_file is not None:
        raise UserInputError("give only one of --seed and --noise-file")
    check_noise_file(args.noise_file)
    seed = 0 if args.seed is None else args.seed
    scorers: list[PairScorer] = []
    if args.model is not None:
        clf = load_classifier(args)
        timesteps = interval_grid(args.t_interval, clf.model.num_train_timesteps)
        scorers.append(
            DiffusionMatcher(clf, timesteps, seed, args.noise_file, args.loss, args.normalize, args.batch_size)
        )
    scorers += [ClipMatcher.from_spec(spec, args.device) for spec in args.baseline]
    return scorers


def run(args: argparse.Namespace) -> int:
    from ..matching.scores import match

    image_options = image_options_from_args(args)
    images = [path for path in args.images if readable(path, image_options, args.tally)]
    if not images:
        return args.tally.code()  # every image failed, each said so: nothing to score
    scorers = scorers_from_args(args)
    results = [match(s, images, args.captions, show_progress(args), image_options) for s in scorers]
    args.tally.done = len(images)
    if args.json:
        for r in results:
            print_json(r.to_dict())
    elif args.csv:
        write_csv(results)
    else:
        for r in results:
            print_table(r)
    return args.tally.code()


def readable(path: str, image_options: ImageOptions, tally: Tally) -> bool:
    """Whether the image can be decoded; if not, its one line goes to stderr (decoded again when scored: cheap
    next to the model calls, and each scorer reads the files itself)."""
    from ..data.images import load_image

    try:
        load_image(path, image_options)
    except UserInputError as exc:
        tally.fail(exc)
        return False
    return True


def write_csv(results: list[MatchResult]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["scorer", "image", *results[0].captions])
    for r in results:
        for image, row in zip(r.images, r.scores):
            w.writerow([r.scorer, image, *(f"{s:.8g}" for s in row)])


def print_table(r: MatchResult) -> None:
    """Images down, captions across (numbered, listed below); * marks each image's best caption."""
    print(f"{r.scorer}: score = higher is a better match")
    width = max(len(x) for x in r.images)
    print(" " * width + "".join(f"  {'caption ' + str(j):>14}" for j in range(len(r.captions))))
    for image, row, best in zip(r.images, r.scores, r.best_caption()):
        cells = "".join(f"  {s:>13.6f}{'*' if j == best else ' '}" for j, s in enumerate(row))
        print(f"{image:<{width}}{cells}")
    for j, c in enumerate(r.captions):
        print(f"  caption {j}: {c}")

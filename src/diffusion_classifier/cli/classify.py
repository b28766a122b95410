"""`diffusion-classifier classify`: classify image files, as a ranked table or JSON lines."""

from __future__ import annotations

import argparse

from ..errors import UserInputError
from .options import (
    add_image_options,
    add_label_options,
    add_model_options,
    add_schedule_options,
    classifier_config_from_args,
    image_options_from_args,
    labels_from_args,
    load_classifier,
    positive_int,
)
from .rules import print_json, show_progress


def add_parser(sub) -> None:
    p = sub.add_parser(
        "classify",
        help="classify images among candidate labels",
        description="Score every candidate label of each image by the model's noise-prediction error on the same "
        "(timestep, noise) trials; the lowest error wins. Prints a ranked table per image, or JSON lines. A bad "
        "image is reported in one line and the others are classified (exit 1; exit 2 when none could be).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_image_options(p)
    add_model_options(p)
    add_label_options(p)
    add_schedule_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout (nothing else there)")
    p.add_argument("--top", type=positive_int, default=5, help="labels shown per image in the table (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.images import load_image
    from ..data.prompts import check_labels, check_template

    labels, prompts = labels_from_args(args)
    if labels is not None:  # fail fast, before the model loads
        check_labels(labels)
    if args.template is not None:
        check_template(args.template)
    image_options = image_options_from_args(args)
    if len(args.images) == 1:  # before torch is imported: a mistyped path answers at once
        load_image(args.images[0], image_options)
    if args.noise_file is not None and args.seed != 0:  # the file's rows are the noise: a seed would do nothing
        raise UserInputError("give only one of --seed and --noise-file")
    config = classifier_config_from_args(args)  # bad settings fail before the model loads
    clf = load_classifier(args)
    candidates = clf.candidates(labels, args.template, prompts)  # bad labels fail before any image work
    config = config.resolved(clf.model)
    outcomes = clf.classify_stream(
        args.images, prompts=candidates, progress=show_progress(args), **config.call_kwargs()
    )
    waiting: dict[int, object] = {}  # outcomes that finished before an earlier image: printed in input order
    shown = 0
    for position, outcome in outcomes:
        waiting[position] = outcome
        while shown in waiting:
            report(waiting.pop(shown), args, single=len(args.images) == 1)
            shown += 1
    return args.tally.code()


def report(outcome: object, args: argparse.Namespace, single: bool) -> None:
    """One image's outcome: its table or JSON line, or its failure's line on stderr (a lone image's raises)."""
    if isinstance(outcome, UserInputError) and not single:
        args.tally.fail(outcome)
        return
    if isinstance(outcome, BaseException):
        raise outcome
    args.tally.done += 1
    if args.json:
        print_json(outcome.to_dict())
    else:
        print_table(outcome, args.top)


def print_table(result, top: int) -> None:
    print(f"{result.image}: {result.prediction}  ({result.calls} calls, {result.seconds:.1f} s)")
    for rank, s in enumerate(result.scores[:top], start=1):
        print(f"  {rank:>3}. {s['label']:<30} {s['score']:.6f}  p={s.get('probability', float('nan')):.3f}")

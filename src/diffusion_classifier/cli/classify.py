"""`diffusion-classifier classify`: classify image files, as a ranked table or JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

from ..data.images import load_image
from ..data.prompts import check_labels, check_template
from ..errors import UserInputError
from .options import (
    add_image_options,
    add_label_options,
    add_model_options,
    add_schedule_options,
    check_batch_size,
    efficiency_kwargs,
    image_options_from_args,
    labels_from_args,
    load_classifier,
    schedule_from_args,
)


def add_parser(sub) -> None:
    p = sub.add_parser("classify", help="classify images among candidate labels")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_image_options(p)
    add_model_options(p)
    add_label_options(p)
    add_schedule_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.add_argument("--top", type=int, default=5, help="labels shown per image in the table (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    labels, prompts = labels_from_args(args)
    schedule = schedule_from_args(args)
    check_batch_size(args.batch_size)
    if labels is not None:  # fail fast, before the model loads
        check_labels(labels)
    if args.template is not None:
        check_template(args.template)
    image_options = image_options_from_args(args)
    if len(args.images) == 1:
        load_image(args.images[0], image_options)
    efficiency = efficiency_kwargs(args)
    clf = load_classifier(args)
    candidates = clf.candidates(labels, args.template, prompts)  # bad labels fail before any image work
    failed = 0
    for path in args.images:
        try:
            result = clf(
                path,
                prompts=candidates,
                schedule=schedule,
                loss=args.loss,
                seed=args.seed,
                noise=args.noise_file,
                batch_size=args.batch_size,
                progress=sys.stderr.isatty(),
                image_options=image_options,
                **efficiency,
            )
        except UserInputError as exc:
            if len(args.images) == 1:
                raise
            print(f"diffusion-classifier: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            print_table(result, args.top)
    return 1 if failed else 0


def print_table(result, top: int) -> None:
    print(f"{result.image}: {result.prediction}  ({result.calls} calls, {result.seconds:.1f} s)")
    for rank, s in enumerate(result.scores[:top], start=1):
        print(f"  {rank:>3}. {s['label']:<30} {s['score']:.6f}  p={s.get('probability', float('nan')):.3f}")

"""`diffusion-classifier calibrate`: fit timestep weights and the probabilities' temperature on labelled images."""

from __future__ import annotations

import argparse

from ..errors import UserInputError
from .options import (
    add_batch_size_option,
    add_image_options,
    add_model_options,
    add_seed_option,
    image_options_from_args,
    load_classifier,
    positive_int,
)
from .rules import error, exit_code, show_progress


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit timestep weights (--weights) and a temperature on labelled images",
        description="Evaluate every label of a few labelled images on stratified trials, then fit timestep "
        "weights and the probabilities' temperature; writes a weights JSON for `classify` and `eval` "
        "(--weights FILE --temperature T; docs/efficiency.md).",
    )
    add_model_options(p)
    p.add_argument("--data", required=True, help="labelled images: folder:PATH (one subfolder per label), ...")
    p.add_argument("--split", default=None, help="dataset split")
    add_image_options(p)
    p.add_argument("--per-class", type=positive_int, default=5, help="images per label used for fitting (default 5)")
    p.add_argument("--trials", type=int, default=100, help="stratified trials per label and image (default 100)")
    p.add_argument("--template", default=None, help="prompt template for text models")
    add_seed_option(p)
    add_batch_size_option(p)
    p.add_argument("--out", required=True, metavar="FILE", help="weights JSON to write (use it with --weights)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import ClassifierConfig
    from ..data.datasets import open_dataset
    from ..files import check_out_file
    from ..reporting.fitting import calibrate_dataset

    if not 2 <= args.trials <= 500:
        raise UserInputError(f"--trials must lie in 2..500, got {args.trials}")
    out = check_out_file(args.out)  # before the fit: a fit that cannot be saved is lost
    config = ClassifierConfig(seed=args.seed, batch_size=args.batch_size, image_options=image_options_from_args(args))
    data = open_dataset(args.data, args.split, image_options=config.image_options)
    chosen = [
        i
        for k in range(len(data.class_names))
        for i in [j for j, y in enumerate(data.label_ids) if y == k][: args.per_class]
    ]
    clf = load_classifier(args)
    cal, records = calibrate_dataset(
        clf, data, chosen, args.trials, config=config, template=args.template, progress=show_progress(args)
    )
    failed = [r for r in records.values() if r["status"] != "ok"]
    for r in failed:  # left out of the fit
        error(f"image {r['index']} ({r['label']}): {r['error']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    cal.save(out)
    print(f"wrote {args.out} ({cal.n_images} images, {args.trials} trials per label)")
    print(f"  weights per bin: {', '.join(f'{v:.3g}' for v in cal.weights.values)}")
    print(f"  temperature: {cal.temperature:.4g} with these weights (--weights {args.out} --temperature ...)")
    print(f"  temperature: {cal.temperature_uniform:.4g} with uniform weights")
    return exit_code(cal.n_images, len(failed))

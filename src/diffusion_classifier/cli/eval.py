"""`diffusion-classifier eval`: classify a dataset into a resumable run directory (one or many processes)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..data.datasets import HUB_DATASETS
from ..data.prompts import DEFAULT_TEMPLATE
from ..errors import UserInputError
from .options import (
    add_image_options,
    add_label_options,
    add_model_options,
    add_schedule_options,
    classifier_config_from_args,
    labels_from_args,
    load_classifier,
)
from .rules import error, exit_code, show_progress

if TYPE_CHECKING:
    from ..runs.engine import Shard


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate on a dataset into a resumable run directory",
        description="Classify every image of a dataset split; rerun the same command to resume. "
        "Run it under `torchrun --nproc-per-node=N -m diffusion_classifier eval ...` to shard images over processes.",
    )
    add_dataset_options(p)
    add_image_options(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created, or resumed)")
    p.add_argument("--save-errors", action="store_true", help="store every per-trial error in the records")
    add_model_options(p, required=False)  # --model, or --baseline alone
    p.add_argument(
        "--baseline",
        default=None,
        metavar="clip:MODEL",
        help='evaluate a CLIP zero-shot baseline instead of --model (template "a photo of a {}." unless given)',
    )
    add_label_options(p)
    add_schedule_options(p)
    p.set_defaults(func=run)


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument(
        "--dataset",
        required=True,
        help=f"builtin:mnist, folder:PATH, {', '.join(HUB_DATASETS)}, a save_to_disk folder or a hub id",
    )
    g.add_argument("--split", default=None, help="dataset split (default: the one the paper evaluates)")
    g.add_argument(
        "--data-dir", default=None, help="a local copy of a named dataset: a save_to_disk folder or class folders"
    )
    g.add_argument("--image-column", default=None, help="image column of a HF dataset (default: detected)")
    g.add_argument("--label-column", default=None, help="label column of a HF dataset (default: detected)")
    sel = g.add_mutually_exclusive_group()
    sel.add_argument(
        "--limit", type=int, default=None, help="evaluate N images: the first N of a seeded shuffle of the split"
    )
    sel.add_argument("--per-class", type=int, default=None, metavar="N", help="evaluate N seeded picks of every class")
    sel.add_argument(
        "--subset", default=None, metavar="FILE", help="evaluate these dataset indices (.npy, JSON list or text)"
    )
    g.add_argument(
        "--subset-seed",
        type=int,
        default=None,
        help="seed of --limit's shuffle and --per-class's picks (default: --seed); the run saves them as subset.npy",
    )


def run(args: argparse.Namespace) -> int:
    from ..reporting.report import markdown_table
    from ..runs.engine import Shard

    shard = Shard.from_env()
    summary = evaluate_args(args, shard)
    if shard.rank != 0:
        return 0  # rank 0 speaks for the run
    print(markdown_table([summary]))
    if summary.failed:
        error(f"{summary.failed} image(s) failed (see the records in {args.out}); fix them and rerun to classify them")
    return exit_code(summary.n, summary.failed)


def evaluate_args(args: argparse.Namespace, shard: Shard, progress: bool | None = None):
    """evaluation.evaluate with the arguments' settings: every bad argument fails before the model loads."""
    from ..data.datasets import open_dataset, read_subset_file
    from ..runs.engine import RunStore
    from ..runs.evaluation import Selection, evaluate

    RunStore(args.out).check()  # first: a run directory that cannot be used costs no dataset read
    labels, prompts = labels_from_args(args)
    config = classifier_config_from_args(args)
    dataset = open_dataset(
        args.dataset, args.split, args.data_dir, args.image_column, args.label_column, config.image_options
    )
    subset = read_subset_file(args.subset) if args.subset else None
    return evaluate(
        lambda: classifier_from_args(args, shard.device(args.device)),
        dataset,
        args.out,
        config=config,
        labels=labels,
        template=template_from_args(args, prompts),
        prompts=prompts,
        selection=Selection(args.limit, args.per_class, subset, args.subset_seed),
        save_errors=args.save_errors,
        model_name=args.model or args.baseline,
        recorded={"image_size": args.image_size, "dtype": args.dtype},
        shard=shard,
        progress=show_progress(args) if progress is None else progress,
    )


def classifier_from_args(args: argparse.Namespace, device: str | None):
    """The diffusion classifier of --model, or the CLIP zero-shot classifier of --baseline clip:MODEL."""
    if (args.model is None) == (getattr(args, "baseline", None) is None):
        raise UserInputError("give one of --model (a diffusion model) and --baseline clip:MODEL")
    if args.model is None:
        from ..matching.clip_baseline import ClipClassifier

        return ClipClassifier.from_spec(args.baseline, device)
    return load_classifier(args, device)


def template_from_args(args: argparse.Namespace, prompts) -> str | None:
    """--template; for a CLIP baseline on bare labels, CLIP's standard "a photo of a {}." (not the published
    diffusion prompts of the dataset)."""
    if getattr(args, "baseline", None) and args.template is None and prompts is None:
        return DEFAULT_TEMPLATE
    return args.template

"""`diffusion-classifier eval`: classify a dataset into a resumable run directory (one or many processes)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..data.datasets import HUB_DATASETS
from ..data.prompts import DEFAULT_TEMPLATE
from ..errors import UserInputError
from .options import (
    add_label_options,
    add_model_options,
    add_schedule_options,
    check_noise_file,
    efficiency_kwargs,
    labels_from_args,
    load_classifier,
    resolved_schedule,
)
from .rules import show_progress

if TYPE_CHECKING:
    from ..runs import Shard


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate on a dataset into a resumable run directory",
        description="Classify every image of a dataset split; rerun the same command to resume. "
        "Run it under `torchrun --nproc-per-node=N -m diffusion_classifier eval ...` to shard images over processes.",
    )
    add_dataset_options(p)
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
    g.add_argument("--data-dir", default=None, help="a local save_to_disk copy of a named dataset")
    g.add_argument("--image-column", default=None, help="image column of a HF dataset (default: detected)")
    g.add_argument("--label-column", default=None, help="label column of a HF dataset (default: detected)")
    sel = g.add_mutually_exclusive_group()
    sel.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    sel.add_argument("--subset", default=None, metavar="FILE", help="evaluate these dataset indices (a file)")


def run(args: argparse.Namespace) -> int:
    from ..report import markdown_table
    from ..runs import Shard, end_group, start_group

    shard = Shard.from_env()
    grouped = start_group(shard)
    try:
        summary = evaluate_from_args(args, shard, grouped)
    finally:
        end_group(grouped)
    if shard.rank == 0:
        print(markdown_table([summary]))
    return 0


def evaluate_from_args(args: argparse.Namespace, shard: Shard, grouped: bool, progress: bool | None = None):
    """Build the job from the arguments, claim the run directory, classify this shard; the run's summary."""
    from ..data.datasets import open_dataset, read_subset_file, select_indices
    from ..report import summarize_run
    from ..runs import EvalJob, RunStore, barrier, claim_in_turn, eval_candidates, make_config, run_eval
    from ..schedules import PUBLISHED

    labels, prompts = labels_from_args(args)
    check_noise_file(args.noise_file)
    options = efficiency_kwargs(args)
    dataset = open_dataset(args.dataset, args.split, args.data_dir, args.image_column, args.label_column)
    subset = read_subset_file(args.subset) if args.subset else None
    indices = select_indices(len(dataset), args.limit, subset)
    clf = classifier_from_args(args, shard.device(args.device))
    schedule, loss = resolved_schedule(args, clf, PUBLISHED.get(dataset.name))
    job = EvalJob(
        dataset=dataset,
        indices=indices,
        candidates=eval_candidates(clf, dataset, indices, labels, template_from_args(args, prompts), prompts),
        schedule=schedule,
        loss=loss,
        seed=args.seed,
        noise_file=args.noise_file,
        batch_size=args.batch_size,
        save_errors=args.save_errors,
        options=options,
    )
    config = make_config(
        args.model or args.baseline,
        job,
        limit=args.limit,
        subset=subset,
        image_size=args.image_size,
        dtype=args.dtype,
        model_info=clf.model.describe(),
    )
    store = RunStore(args.out)
    claim_in_turn(shard, grouped, lambda: store.claim(config))
    run_eval(clf, job, store, shard, progress=show_progress(args) if progress is None else progress)
    barrier(grouped)  # every shard's records are on disk before rank 0 summarises
    return summarize_run(store)


def classifier_from_args(args: argparse.Namespace, device: str | None):
    """The diffusion classifier of --model, or the CLIP zero-shot classifier of --baseline clip:MODEL."""
    if (args.model is None) == (getattr(args, "baseline", None) is None):
        raise UserInputError("give one of --model (a diffusion model) and --baseline clip:MODEL")
    if args.model is None:
        from ..clip_baseline import ClipClassifier

        return ClipClassifier.from_spec(args.baseline, device)
    return load_classifier(args, device)


def template_from_args(args: argparse.Namespace, prompts) -> str | None:
    """--template; for a CLIP baseline on bare labels, CLIP's standard "a photo of a {}." (not the published
    diffusion prompts of the dataset)."""
    if getattr(args, "baseline", None) and args.template is None and prompts is None:
        return DEFAULT_TEMPLATE
    return args.template

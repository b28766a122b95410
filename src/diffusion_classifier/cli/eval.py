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
    check_noise_file,
    efficiency_kwargs,
    image_options_from_args,
    labels_from_args,
    load_classifier,
    resolved_schedule,
)
from .rules import error, exit_code, show_progress

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
    from ..report import markdown_table
    from ..runs import Shard, end_group, start_group

    shard = Shard.from_env()
    grouped = start_group(shard)
    try:
        summary = evaluate_from_args(args, shard, grouped)
    finally:
        end_group(grouped)
    if shard.rank != 0:
        return 0  # rank 0 speaks for the run
    print(markdown_table([summary]))
    if summary.failed:
        error(f"{summary.failed} image(s) failed (see the records in {args.out}); fix them and rerun to classify them")
    return exit_code(summary.n, summary.failed)


def evaluate_from_args(args: argparse.Namespace, shard: Shard, grouped: bool, progress: bool | None = None):
    """Build the job from the arguments, lock and claim the run directory, classify this shard; the run's summary.

    Everything the user can get wrong (--out, the run directory, the dataset) is checked before the model loads.
    """
    from ..data.datasets import open_dataset, read_subset_file, save_subset, select_indices
    from ..report import summarize_run
    from ..runs import SUBSET_FILE, EvalJob, RunStore, barrier, claim_in_turn, eval_candidates, make_config, run_eval
    from ..schedules import PUBLISHED

    store = RunStore(args.out)
    store.check()
    labels, prompts = labels_from_args(args)
    check_noise_file(args.noise_file)
    options = efficiency_kwargs(args)
    image_options = image_options_from_args(args)
    dataset = open_dataset(args.dataset, args.split, args.data_dir, args.image_column, args.label_column, image_options)
    subset = read_subset_file(args.subset) if args.subset else None
    seeded = args.limit is not None or args.per_class is not None
    subset_seed = (args.seed if args.subset_seed is None else args.subset_seed) if seeded else None
    indices = select_indices(dataset, args.limit, subset, args.per_class, subset_seed or 0)
    with store.lock(shard):
        clf = classifier_from_args(args, shard.device(args.device))
        # a model's own protocol (DiT's) before the dataset's published one (Stable Diffusion's), then the default
        own = getattr(clf.model, "default_schedule", None)
        schedule, loss = resolved_schedule(args, clf, own or PUBLISHED.get(dataset.name))
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
            per_class=args.per_class,
            subset_seed=subset_seed,
            image_size=args.image_size,
            dtype=args.dtype,
            exif_orientation=image_options.exif_orientation,
            model_info=clf.model.describe(),
        )
        claim_in_turn(shard, grouped, lambda: store.claim(config))
        if shard.rank == 0 and len(indices) < len(dataset):
            save_subset(store.dir / SUBSET_FILE, indices)  # the official --subset_path reads it too
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

"""`diffusion-classifier winoground`: text, image and group scores on Winoground, with CLIP baselines beside."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserInputError
from ..matching import DiffusionMatcher
from ..runs import RunStore, Shard, barrier, claim_in_turn, end_group, exit_code, start_group
from ..winoground import (
    WinogroundConfig,
    check_run_dir,
    claim,
    markdown_table,
    open_winoground,
    results_json,
    run_winoground,
    summarize,
)
from .match import add_scorer_options, scorers_from_args
from .options import add_image_options, image_options_from_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "winoground",
        help="Winoground text / image / group scores (image-text matching)",
        description="Scores each (image, caption) pair by minus the mean error over t in range(K // 2, 1000, K), "
        "the i-th timestep with noise i, the same noise for all four pairs (Li et al. 2023). Winoground is gated "
        "on the hub: accept its terms and `hf auth login`, or pass --data-dir with a local copy. Run it under "
        "`torchrun --nproc-per-node=N -m diffusion_classifier winoground --out DIR ...` to shard the examples.",
    )
    p.add_argument(
        "--data-dir", default=None, help="a local copy: examples.jsonl + images/, or a datasets save_to_disk folder"
    )
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    add_image_options(p)
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="keep per-example records here; rerun to resume")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    add_scorer_options(p, t_interval=1)  # the published command evaluates all 1000 timesteps
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UserInputError(f"--limit must be at least 1, got {args.limit}")
    shard = Shard.from_env()
    if shard.world_size > 1 and args.out is None:
        raise UserInputError("a run over several processes needs --out: each process writes its records there")
    # a missing or gated dataset fails before any model loads
    data = open_winoground(args.data_dir, image_options=image_options_from_args(args))
    args.device = shard.device(args.device)
    grouped = start_group(shard)
    try:
        summaries = score(args, data, shard, grouped)
    finally:
        end_group(grouped)
    if shard.rank != 0:
        return 0
    if args.json:
        print(json.dumps(results_json(summaries)))
    else:
        for s in summaries:
            print(markdown_table(s))
    return exit_code(summaries[0].overall.n, summaries[0].failed)


def score(args: argparse.Namespace, data, shard: Shard, grouped: bool) -> list:
    """Lock and claim the run directory, score this shard's examples; every scorer's summary of the whole run."""
    n = len(data) if args.limit is None else min(args.limit, len(data))
    if args.out is None:
        scorers = scorers_from_args(args)
        records = run_winoground(data, scorers, None, args.limit, progress=sys.stderr.isatty(), shard=shard)
        return [summarize(records, s.name, n) for s in scorers]
    store = RunStore(args.out)
    check_run_dir(store)  # --out writable, an earlier run readable: before any model loads
    with store.lock(shard):
        scorers = scorers_from_args(args)
        config = make_config(args, data.source, n, scorers)
        claim_in_turn(shard, grouped, lambda: claim(store, config))
        run_winoground(data, scorers, store, args.limit, progress=sys.stderr.isatty(), shard=shard)
        barrier(grouped)  # every shard's records are on disk before rank 0 summarises
    records = {i: r for i, r in store.records().items() if i < n}
    return [summarize(records, s.name, n) for s in scorers]


def make_config(args: argparse.Namespace, source: str, n: int, scorers) -> WinogroundConfig:
    diffusion = next((s for s in scorers if isinstance(s, DiffusionMatcher)), None)
    return WinogroundConfig(
        data=source,
        examples=n,
        scorers=tuple(s.name for s in scorers),
        model=args.model,
        t_interval=args.t_interval if diffusion else None,
        seed=0 if args.seed is None else args.seed,
        noise_file=args.noise_file,
        loss=args.loss,
        normalize=args.normalize,
        image_size=args.image_size,
        dtype=args.dtype,
        limit=args.limit,
        exif_orientation=args.exif_orientation,
        model_info={s.name: s.describe() for s in scorers},
    )

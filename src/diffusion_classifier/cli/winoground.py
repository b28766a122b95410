"""`diffusion-classifier winoground`: text, image and group scores on Winoground, with CLIP baselines beside."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .match import add_scorer_options, scorers_from_args
from .options import add_image_options, image_options_from_args, positive_int
from .rules import error, exit_code, print_json, show_progress

if TYPE_CHECKING:
    from ..matching.winoground import WinogroundConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "winoground",
        help="Winoground text / image / group scores (image-text matching)",
        description="Scores each (image, caption) pair by minus the mean error over t in range(K // 2, 1000, K), "
        "the i-th timestep with noise i, the same noise for all four pairs (Li et al. 2023). Winoground is gated "
        "on the hub: accept its terms and `hf auth login`, or pass --data-dir with a local copy. Run it under "
        "`torchrun --nproc-per-node=N -m diffusion_classifier winoground --out DIR ...` to shard the examples. "
        "An example whose images cannot be read is reported and counted apart (exit 1).",
    )
    p.add_argument(
        "--data-dir", default=None, help="a local copy: examples.jsonl + images/, or a datasets save_to_disk folder"
    )
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N examples")
    add_image_options(p)
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="keep per-example records here; rerun to resume")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object (nothing else on stdout)")
    add_scorer_options(p, t_interval=1)  # the published command evaluates all 1000 timesteps
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..matching.winoground import (
        WinogroundConfig,
        markdown_table,
        open_winoground,
        results_json,
        run_winoground,
        summarize,
    )
    from ..runs.engine import RunStore, Shard

    shard = Shard.from_env()
    if args.out is not None:
        RunStore(args.out, WinogroundConfig).check()  # --out writable, an earlier run readable: before any work
    # a missing or gated dataset fails before any model loads
    data = open_winoground(args.data_dir, image_options=image_options_from_args(args))
    args.device = shard.device(args.device)
    scorers, records = run_winoground(
        data,
        lambda: scorers_from_args(args),
        args.out,
        args.limit,
        show_progress(args),
        shard,
        describe=lambda scorers, n: make_config(args, data.source, n, scorers),
    )
    if shard.rank != 0:
        return 0
    n = len(data) if args.limit is None else min(args.limit, len(data))
    summaries = [summarize(records, s.name, n) for s in scorers]
    for r in records.values():
        if r["status"] != "ok":
            error(f"Winoground example {r['id']}: {r.get('error')}")
    if args.json:
        print_json(results_json(summaries))
    else:
        for s in summaries:
            print(markdown_table(s))
    failed = summaries[0].failed  # an example that fails, fails for every scorer
    return exit_code(summaries[0].overall.n, failed)


def make_config(args: argparse.Namespace, source: str, n: int, scorers) -> WinogroundConfig:
    from ..matching.scores import DiffusionMatcher
    from ..matching.winoground import WinogroundConfig

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

"""`diffusion-classifier report`: a markdown table comparing runs, figures, or the JSON view of runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserInputError
from ..files import check_out_dir
from .rules import print_json

if TYPE_CHECKING:
    from ..runs.engine import RunStore


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="summarise run directories (finished or not)",
        description="Top-1 (95% Wilson interval), mean per-class accuracy (95% normal approximation), "
        "calls and seconds per image, as a markdown table; figures go into each RUN_DIR or --out.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `eval` or `winoground --out`")
    p.add_argument(
        "--out", default=None, help="write the figures here (one subfolder per run) instead of into each RUN_DIR"
    )
    p.add_argument("--no-figures", action="store_true", help="print the table only")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead: one object for one RUN_DIR, one object per line for several",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..matching import winoground
    from ..reporting.report import markdown_table, run_json, summarize_run
    from ..runs.engine import RunStore

    runs = readable_runs(args)
    if not runs:
        return args.tally.code()
    if args.out is not None and not args.json and not args.no_figures:
        check_out_dir(args.out)
    if args.json:  # in the order given, whatever their kind
        for run_dir, is_wino in runs:
            print_json(winoground_json(run_dir) if is_wino else run_json(RunStore(run_dir)))
    else:
        stores = [RunStore(d) for d, is_wino in runs if not is_wino]
        if stores:
            print(markdown_table([summarize_run(s) for s in stores]))
            if not args.no_figures:
                for path in write_all_figures(stores, Path(args.out) if args.out else None):
                    print(f"wrote {path}")
        for run_dir in [d for d, is_wino in runs if is_wino]:
            print(f"## {run_dir}\n")
            print("\n".join(winoground.markdown_table(s) for s in winoground.summarize_run(run_dir)))
    args.tally.done = len(runs)
    return args.tally.code()


def readable_runs(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """(RUN_DIR, is it a Winoground run) for each run that can be read, before any output; each other one is a
    line on stderr, and the rest are reported (exit 1)."""
    from ..matching import winoground
    from ..runs.engine import RunStore

    runs = []
    for run_dir in args.runs:
        try:
            is_wino = winoground.is_winoground_run(run_dir)
            if not is_wino:
                RunStore(run_dir).require_config()
            runs.append((run_dir, is_wino))
        except UserInputError as exc:
            args.tally.fail(exc)
    return runs


def winoground_json(run_dir: str) -> dict:
    from ..matching import winoground

    return {"run": run_dir, **winoground.results_json(winoground.summarize_run(run_dir))}


def write_all_figures(stores: list[RunStore], out: Path | None) -> list[Path]:
    """Each run's figures: into its directory, or into --out/NAME (NAME: the run directory's name, made
    unique when two runs share one); with --out and several runs, also one accuracy-vs-calls figure
    comparing them."""
    from ..reporting import figures
    from ..reporting.report import accuracy_point, summarize_run, write_figures

    if out is None:
        return [path for store in stores for path in write_figures(store)]
    names = unique_names([store.dir for store in stores])
    paths = [path for name, store in zip(names, stores) for path in write_figures(store, out / name)]
    if len(stores) > 1:
        points = {name: accuracy_point(s) for name, s in zip(names, stores) if summarize_run(s).n}
        if points:
            paths.append(figures.accuracy_calls_figure(points, out / "accuracy_vs_calls.png"))
    return paths


def unique_names(dirs: list[Path]) -> list[str]:
    """Short distinct names for run directories: the folder's name, with as many parent folders as it takes
    to tell two apart ("a-run", "b-run"); a directory given twice is numbered ("run", "run-2")."""
    parts = [d.resolve().parts for d in dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["-".join(p[-k:]).lstrip("/") or "root" for p in parts]
        if len(set(names)) == len(names) or len(set(parts)) < len(parts):
            break
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out

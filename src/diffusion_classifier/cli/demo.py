"""`diffusion-classifier demo`: classify the 1,000 held-out MNIST digits with the bundled model, offline, on CPU.

The demo is an ordinary run (the same runner as `eval --dataset builtin:mnist --model builtin:mnist`)
whose run directory is the report folder. Rerunning it into the same folder resumes, with another
--limit too (the records it has are reused); --fresh deletes the previous demo's records first.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import strict_json
from ..errors import UserInputError
from .options import add_batch_size_option, add_seed_option, device_arg
from .rules import exit_code, print_json, show_progress

if TYPE_CHECKING:  # torch-heavy: imported where the demo runs, never while parsing
    from ..estimator import Loss
    from ..pipeline import DiffusionClassifier
    from ..schedules import Schedule

MODEL = "builtin:mnist"
DATASET = "builtin:mnist"
#: The demo's schedule: the one place to change it. None uses the bundled model's default_schedule,
#: and a Full schedule on FALLBACK_TIMESTEPS with the l2 loss where the model carries none.
DEMO_SCHEDULE: tuple[Schedule, Loss] | None = None
FALLBACK_TIMESTEPS = tuple(range(50, 1000, 100))  # 10 timesteps: 100 calls


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="classify the held-out MNIST digits with the bundled model (offline, CPU)",
        description="Runs the bundled MNIST diffusion model as a zero-shot classifier on the 1,000 held-out "
        "digits and writes a report folder. Rerunning into the same folder resumes.",
    )
    p.add_argument("--out", default="demo-report", help="report folder (default demo-report/)")
    p.add_argument(
        "--limit", type=int, default=None, help="classify N test digits: the first N of a shuffle seeded by --seed"
    )
    p.add_argument("--json", action="store_true", help="print one final JSON object")
    p.add_argument("--fresh", action="store_true", help="delete an earlier demo's records in --out first")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda, cuda:N or mps")
    add_seed_option(p)
    add_batch_size_option(p, default=100)
    p.set_defaults(func=run)


def demo_schedule(clf: DiffusionClassifier) -> tuple[Schedule, Loss]:
    from ..schedules import Full

    return DEMO_SCHEDULE or getattr(clf.model, "default_schedule", None) or (Full(FALLBACK_TIMESTEPS), "l2")


def run(args: argparse.Namespace) -> int:
    result = run_demo(
        Path(args.out), args.limit, args.seed, args.device, args.batch_size, args.fresh, show_progress(args)
    )
    if args.json:
        print_json({k: result[k] for k in ("n", "accuracy", "calls_per_image", "seconds_per_image",
                                           "baseline_accuracy")})  # fmt: skip
    else:
        base = result["baseline_accuracy"]
        print(f"MNIST held-out digits: {result['n']} classified, accuracy {_pct(result['accuracy'])}")
        print(f"model calls per image: {result['calls_per_image']:.0f}, seconds per image: "
              f"{result['seconds_per_image']:.3f}")  # fmt: skip
        if base is not None:
            print(f"discriminative baseline on the same digits: {_pct(base)}")
        print(f"report: {result['out']}")
    return exit_code(result["n"], result["failed"])


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def run_demo(
    out: Path,
    limit: int | None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int | None = 100,
    fresh: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate (or resume), then write results.json and the figures into out; the numbers."""
    from ..data.datasets import open_dataset, select_indices
    from ..pipeline import DiffusionClassifier
    from ..report import run_json, summarize_run, write_figures
    from ..runs import EvalJob, RunStore, eval_candidates, make_config, run_eval, write_atomic

    store = RunStore(out)
    store.check()  # before the model loads: --out writable, an earlier demo readable
    dataset = open_dataset(DATASET)
    indices = select_indices(dataset, limit, seed=seed)
    with store.lock():
        if fresh:
            store.clear()
        clf = DiffusionClassifier.from_pretrained(MODEL, device=device)
        schedule, loss = demo_schedule(clf)
        job = EvalJob(
            dataset=dataset,
            indices=indices,
            candidates=eval_candidates(clf, dataset, indices),
            schedule=schedule,
            loss=loss,
            seed=seed,
            batch_size=batch_size,
            save_errors=True,  # the error-vs-timestep figure needs them; 1,000 digits x 100 trials is small
        )
        try:
            subset_seed = seed if limit is not None else None
            store.claim(make_config(MODEL, job, limit=limit, subset_seed=subset_seed, model_info=clf.model.describe()))
        except UserInputError as exc:
            raise UserInputError(f"{exc}; or pass --fresh to replace the earlier demo") from None
        run_eval(clf, job, store, progress=progress)
    summary = summarize_run(store)
    classified = [r["index"] for r in store.selected_records().values() if r["status"] == "ok"]
    result = {
        "n": summary.n,
        "failed": summary.failed,
        "accuracy": None if math.isnan(summary.top1) else summary.top1,
        "calls_per_image": summary.calls_per_image,
        "seconds_per_image": summary.seconds_per_image,
        "baseline_accuracy": baseline(out, classified),
        "out": str(out),
    }
    write_atomic(out / "results.json", strict_json.dumps({**result, **run_json(store)}, indent=1) + "\n")
    write_figures(store)
    return result


def baseline(out: Path, indices: list[int]) -> float | None:
    """The discriminative baseline's accuracy on the same digits (test-split indices) as the diffusion
    classifier's (None if it is not available, or there are no digits).

    Training it takes a while on a CPU and its predictions depend only on its config, so the predictions
    on all 1,000 digits are cached in out/baseline.json beside that config.
    """
    from ..runs import write_atomic

    try:
        from ..baseline import BaselineConfig, baseline_predictions
        from ..data.mnist import test_split
    except ImportError:
        return None
    if not indices:
        return None
    config = asdict(BaselineConfig(seed=0))
    cache = out / "baseline.json"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if not isinstance(saved, dict) or saved.get("config") != config or "predictions" not in saved:
        saved = {"config": config, "predictions": baseline_predictions(seed=0)}
        write_atomic(cache, strict_json.dumps(saved) + "\n")
    truth = test_split().labels
    return sum(saved["predictions"][i] == truth[i] for i in indices) / len(indices)

"""The demo: the bundled MNIST model classifies the 1,000 held-out digits (offline, CPU) into a report folder.

The demo is an ordinary evaluation (evaluation.evaluate: the same engine as `eval --dataset builtin:mnist
--model builtin:mnist`) whose run directory is the report folder, with the model's own schedule (its
classifier_config.json's default_schedule). Rerunning it into the same folder resumes, with another
limit too (the records it has are reused); fresh deletes the previous demo's records first.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import strict_json
from ..config import ClassifierConfig
from ..errors import UserInputError
from .evaluation import Selection, evaluate

MODEL = "builtin:mnist"
DATASET = "builtin:mnist"


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
    from ..pipeline import DiffusionClassifier
    from ..reporting.report import run_json, write_figures
    from .engine import RunStore, Shard, write_atomic

    model = MODEL  # read now: tests point it at a tiny model
    try:
        summary = evaluate(
            lambda: DiffusionClassifier.from_pretrained(model, device=device),
            DATASET,
            out,
            config=ClassifierConfig(seed=seed, batch_size=batch_size),
            selection=Selection(limit=limit),
            save_errors=True,  # the error-vs-timestep figure needs them; 1,000 digits x 100 trials is small
            model_name=model,
            shard=Shard(),
            progress=progress,
            fresh=fresh,
        )
    except UserInputError as exc:
        if "holds a run" not in str(exc):  # the claim refused the earlier demo (not, e.g., a busy lock)
            raise
        raise UserInputError(f"{exc}; or pass --fresh to replace the earlier demo") from None
    store = RunStore(out)
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
    from .engine import write_atomic

    try:
        from ..data.mnist import test_split
        from ..training.baseline import BaselineConfig, baseline_predictions
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

"""Run reports: a summary per run directory, a markdown table comparing runs, the JSON view, and figures."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..runs.engine import RunConfig, RunStore
from . import figures
from .metrics import accuracy, confusion_matrix, mean_per_class_accuracy, wilson_interval


@dataclass(frozen=True)
class RunSummary:
    """One run's numbers. Accuracy counts the images classified (`n`); failed images are listed apart."""

    run: str
    model: str
    dataset: str
    schedule: str
    expected: int  # images the run covers
    n: int  # images classified
    failed: int
    top1: float
    top1_low: float  # Wilson 95 % interval
    top1_high: float
    mean_class: float
    mean_class_low: float  # normal approximation, 95 %
    mean_class_high: float
    calls_per_image: float
    seconds_per_image: float

    @property
    def complete(self) -> bool:
        return self.n + self.failed >= self.expected


def ok_records(records: dict[int, dict]) -> list[dict]:
    return [r for r in records.values() if r.get("status") == "ok"]


def by_index(records: list[dict]) -> bool:
    """Whether the records carry class indices (runs before them carry names only)."""
    return all("label_index" in r and "prediction_index" in r for r in records)


def outcomes(records: list[dict]) -> tuple[list[Hashable], list[Hashable]]:
    """(true classes, predicted classes): class indices when every record carries them (two classes may
    share a name), else class names."""
    keys = ("label_index", "prediction_index") if by_index(records) else ("label", "prediction")
    return [r[keys[0]] for r in records], [r[keys[1]] for r in records]


def summarize_run(store: RunStore) -> RunSummary:
    config = store.require_config()
    records = store.selected_records()
    ok = ok_records(records)
    labels, preds = outcomes(ok)
    k = sum(a == b for a, b in zip(labels, preds))
    lo, hi = wilson_interval(k, len(ok))
    mc, mc_lo, mc_hi = mean_per_class_accuracy(labels, preds)
    return RunSummary(
        run=str(store.dir),
        model=config.model,
        dataset=f"{config.dataset}/{config.split}",
        schedule=schedule_label(config.schedule, config.loss),
        expected=config.images,
        n=len(ok),
        failed=len(records) - len(ok),
        top1=accuracy(labels, preds),
        top1_low=lo,
        top1_high=hi,
        mean_class=mc,
        mean_class_low=mc_lo,
        mean_class_high=mc_hi,
        calls_per_image=_mean([r["calls"] for r in ok]),
        seconds_per_image=_mean([r["seconds"] for r in ok]),
    )


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def schedule_label(schedule: dict[str, Any], loss: str) -> str:
    """A short name for a stored schedule: 'Staged 50,500 / 5,1 l1', 'Full x12 l2'."""
    kind = schedule.get("kind", "?")
    if kind == "Staged":
        body = f"{','.join(map(str, schedule['n_samples']))} / {','.join(map(str, schedule['to_keep']))}"
    elif kind == "Full":
        body = f"x{len(schedule['timesteps'])}"
    else:
        body = ""
    return " ".join(x for x in (kind, body, loss) if x)


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}"


def _num(x: float, spec: str) -> str:
    """x formatted, or "-" for a mean over no image (as _pct writes it)."""
    return "-" if math.isnan(x) else format(x, spec)


def markdown_table(summaries: list[RunSummary]) -> str:
    """Runs side by side; intervals are 95 % (top-1: Wilson; mean per-class: normal approximation)."""
    head = (
        "| run | model | dataset | schedule | images | top-1 % [95% Wilson] | mean per-class % [95%] "
        "| calls/image | s/image |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for s in summaries:
        images = f"{s.n}/{s.expected}" + (f" ({s.failed} failed)" if s.failed else "")
        rows.append(
            f"| {s.run} | {s.model} | {s.dataset} | {s.schedule} | {images} "
            f"| {_pct(s.top1)} [{_pct(s.top1_low)}, {_pct(s.top1_high)}] "
            f"| {_pct(s.mean_class)} [{_pct(s.mean_class_low)}, {_pct(s.mean_class_high)}] "
            f"| {_num(s.calls_per_image, ',.0f')} | {_num(s.seconds_per_image, '.2f')} |"
        )
    return "\n".join([head, *rows])


def run_json(store: RunStore) -> dict[str, Any]:
    """The JSON view of a run (finished or not): accuracy over classified images, and every image."""
    summary = summarize_run(store)
    images = [
        {
            "index": r["index"],
            "label": r["label"],
            "label_index": r.get("label_index"),
            "prediction": r.get("prediction"),
            "prediction_index": r.get("prediction_index"),
            "calls": r.get("calls"),
            "seconds": r.get("seconds"),
            "status": r["status"],
        }
        for r in store.selected_records().values()
    ]
    return {
        "run": summary.run,
        "accuracy": None if math.isnan(summary.top1) else summary.top1,
        "n": summary.n,
        "failed": summary.failed,
        "expected": summary.expected,
        "calls_per_image": None if math.isnan(summary.calls_per_image) else summary.calls_per_image,
        "seconds_per_image": None if math.isnan(summary.seconds_per_image) else summary.seconds_per_image,
        "images": images,
    }


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    return {**asdict(summary), "complete": summary.complete}


# --- curves from saved per-trial errors -----------------------------------------------------------


Class = tuple[int | None, str]  # (class index, name); the index is None in records written before indices


def _key_classes(config: RunConfig) -> dict[str, Class]:
    """Candidate key (as stored in records' errors) -> its class."""
    cands = config.candidates_obj()
    return dict(zip(cands.keys(), zip(cands.class_ids, cands.labels)))


def _truth(rec: dict) -> Class:
    return rec.get("label_index"), rec["label"]


def _same(a: Class, b: Class) -> bool:
    """Same class: by index where both know it, else by name."""
    return a[0] == b[0] if a[0] is not None and b[0] is not None else a[1] == b[1]


def _ranked(rec: dict) -> list[Class]:
    """A record's classes best first ("ranking"; older records: the "mean_errors" dict of names)."""
    if "ranking" in rec:
        return [(e["class_index"], e["label"]) for e in rec["ranking"]]
    return [(None, name) for name in rec.get("mean_errors", {})]


def prefix_accuracy_curve(store: RunStore) -> list[tuple[int, float]] | None:
    """(calls per image, accuracy) when each candidate uses only its first m trials, m = 1, 2, 4, ...

    Defined for runs that saved errors with the same trials for every candidate (Full schedules);
    None otherwise. It shows what a shorter Full schedule over the same noise would have scored.
    """
    ok = ok_records(store.selected_records())
    if not ok or any("errors" not in r for r in ok):
        return None
    lengths = {len(e["e"]) for r in ok for e in r["errors"].values()}
    if len(lengths) != 1:
        return None
    key_class = _key_classes(store.require_config())
    total = lengths.pop()
    ms = sorted({min(2**j, total) for j in range(total.bit_length() + 1)})
    curve = []
    for m in ms:
        right = sum(_same(_prefix_prediction(r["errors"], key_class, m), _truth(r)) for r in ok)
        curve.append((m * len(key_class), right / len(ok)))
    return curve


def _prefix_prediction(errors: dict[str, dict], key_class: dict[str, Class], m: int) -> Class:
    means = {key: sum(e["e"][:m]) / m for key, e in errors.items()}
    return key_class[min(means, key=lambda k: (means[k], k))]


def error_by_timestep(store: RunStore) -> tuple[list[int], list[float], list[float]] | None:
    """(timesteps, mean error of the true class, mean error of the best wrong class) over classified images.

    Per image, a class's errors are those of its best candidate; the best wrong class is the wrong
    class with the lowest mean error. None if the run saved no per-trial errors.
    """
    ok = [r for r in ok_records(store.selected_records()) if "errors" in r]
    if not ok:
        return None
    key_class = _key_classes(store.require_config())
    sums: dict[int, list[float]] = {}  # t -> [true sum, true count, wrong sum, wrong count]
    for r in ok:
        wrong = next((c for c in _ranked(r) if not _same(c, _truth(r))), None)
        for slot, cls in ((0, _truth(r)), (2, wrong)):
            key = _best_key(r["errors"], key_class, cls)
            if key is None:
                continue
            for t, e in zip(r["errors"][key]["t"], r["errors"][key]["e"]):
                acc = sums.setdefault(t, [0.0, 0, 0.0, 0])
                acc[slot] += e
                acc[slot + 1] += 1
    ts = sorted(t for t, a in sums.items() if a[1] and a[3])
    return ts, [sums[t][0] / sums[t][1] for t in ts], [sums[t][2] / sums[t][3] for t in ts]


def _best_key(errors: dict[str, dict], key_class: dict[str, Class], cls: Class | None) -> str | None:
    if cls is None:
        return None
    keys = [k for k, c in key_class.items() if _same(c, cls) and errors.get(k, {}).get("e")]
    return min(keys, key=lambda k: sum(errors[k]["e"]) / len(errors[k]["e"])) if keys else None


# --- figures ---------------------------------------------------------------------------------------


def write_figures(store: RunStore, out_dir: Path | None = None, prefix: str = "") -> list[Path]:
    """confusion.png, accuracy_vs_calls.png and (with saved errors) error_vs_timestep.png for one run."""
    out_dir = Path(out_dir or store.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = store.require_config()
    ok = ok_records(store.selected_records())
    if not ok:
        return []
    cands = config.candidates_obj()
    classes = cands.classes if by_index(ok) else list(dict.fromkeys(cands.labels))
    names = [cands.class_names[k] for k in classes] if by_index(ok) else classes
    counts = confusion_matrix(*outcomes(ok), classes)
    paths = [figures.confusion_figure(counts, names, out_dir / f"{prefix}confusion.png", title=config.dataset)]
    paths.append(
        figures.accuracy_calls_figure(
            {store.dir.name: accuracy_point(store)}, out_dir / f"{prefix}accuracy_vs_calls.png"
        )
    )
    curves = error_by_timestep(store)
    if curves is not None and curves[0]:
        paths.append(figures.error_timestep_figure(*curves, out_dir / f"{prefix}error_vs_timestep.png"))
    return paths


def accuracy_point(store: RunStore) -> dict[str, Any]:
    """A run's point (and prefix curve) for accuracy_calls_figure."""
    s = summarize_run(store)
    return {
        "calls": s.calls_per_image,
        "accuracy": s.top1,
        "interval": (s.top1_low, s.top1_high),
        "curve": prefix_accuracy_curve(store),
    }

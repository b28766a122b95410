"""Efficiency benchmark (issue 5): accuracy and model calls per image of full, staged and racing schedules.

For each image, every schedule runs through the same schedule code as the CLI against an ErrorLedger whose
error function computes each (label, t, noise index) error with the model once and caches it, so all
schedules see identical errors for identical trials and the calls they ask for are counted exactly.

    full        every label on the 500 timesteps t = 1, 3, ..., 999 (trial i: the i-th of the stratified order, noise i)
    full-n      the first n of those trials (a fixed, evenly spread budget)
    staged      the published CIFAR-10 schedule (--to-keep 5 1 --n-samples 50 500, its own noise indexing)
    racing...   Racing at several levels, timestep orders, antithetic noise and timestep weightings

Probabilities: the temperature is fitted (NLL) on separate labelled images' full evaluations, then the
expected calibration error (ECE) and NLL are reported on the benchmark images, with and without it.

    python benchmarks/efficiency.py --model gaussian --json
    python benchmarks/efficiency.py --model mnist --limit 200 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from diffusion_classifier.core.calibration import (
    elbo_scale,
    expected_calibration_error,
    fit_temperature,
    nll,
    probabilities,
)
from diffusion_classifier.core.estimator import ErrorLedger, Pair, model_error_fn
from diffusion_classifier.core.noise import NoiseBank
from diffusion_classifier.core.schedules import Full, Racing, Staged, master_grid
from diffusion_classifier.core.timesteps import ordered_grid
from diffusion_classifier.core.weighting import TimestepWeights, exp_weights, fit_weights
from diffusion_classifier.data.prompts import from_labels
from diffusion_classifier.models.gaussian import GaussianClassModel
from diffusion_classifier.pipeline import summarize

GRID = 500  # the master grid of SPEC.md §2 for max n = 500: t = 1, 3, ..., 999


@dataclass
class Bench:
    """A model, its benchmark inputs and labels, and separate labelled inputs to fit weights and temperature."""

    name: str
    model: Any
    inputs: list
    labels: list[int]
    fit_inputs: list
    fit_labels: list[int]
    info: dict = field(default_factory=dict)


def gaussian_bench(n: int, n_fit: int, seed: int = 0) -> Bench:
    """10 Gaussian classes in 1x8x8 with means close enough that the Bayes accuracy is about 90 %."""
    g = torch.Generator().manual_seed(seed)
    model = GaussianClassModel(torch.randn(10, 1, 8, 8, generator=g) * 0.4)
    labels = torch.arange(n + n_fit) % 10
    x = model.sample(labels, g)
    bayes = sum(model.bayes_decision(x[i]) == int(labels[i]) for i in range(n)) / n
    return Bench(
        "gaussian",
        model,
        list(x[:n]),
        labels[:n].tolist(),
        list(x[n:]),
        labels[n:].tolist(),
        {"bayes_accuracy": bayes, "latent_shape": [1, 8, 8]},
    )


def mnist_bench(
    limit: int, n_fit: int, model_path: str = "builtin:mnist", device: str | None = None, compiled: bool = False
) -> Bench:
    """The bundled MNIST model on the first `limit` held-out digits (spread over classes), fit on training digits.

    compiled: run the UNet through the fast path in float32 (channels_last, torch.compile, padded batches of
    64-512 rows): about 1.8x the eager calls/s on 2 CPU cores after a few minutes of compiling, same errors
    up to float32 rounding.
    """
    from PIL import Image

    from diffusion_classifier.data.mnist import test_images, train_split
    from diffusion_classifier.models import load_adapter
    from diffusion_classifier.models.fast import FastConfig, FastModel

    model = load_adapter(model_path, device=device)
    if compiled:
        config = FastConfig(
            dtype="float32", compile=True, channels_last=True, tf32=False, batch_size=512, min_bucket=64
        )
        model = FastModel(model, config)
    images, names = test_images()
    order = sorted(range(len(images)), key=lambda i: (i % 100, i))  # interleave classes so any limit is balanced
    chosen = order[:limit]
    train = train_split()
    fit_rows = sorted(range(len(train.labels)), key=lambda i: (i % 400, i))[:n_fit]
    return Bench(
        "mnist",
        model,
        [images[i] for i in chosen],
        [int(names[i]) for i in chosen],
        [Image.fromarray(train.images[i]) for i in fit_rows],
        [int(train.labels[i]) for i in fit_rows],
        {
            "model_path": model_path,
            "device": str(model.device),
            "compiled": compiled,
            "test_rows": "held-out digits, classes interleaved",
        },
    )


class CachedErrors:
    """An ErrorFn computing each (candidate, trial) once and recording how many the schedules asked for."""

    def __init__(self, error_fn):
        self.error_fn = error_fn
        self.cache: dict[Pair, float] = {}

    def __call__(self, pairs) -> torch.Tensor:
        missing = list(dict.fromkeys(p for p in pairs if p not in self.cache))
        if missing:
            for p, e in zip(missing, self.error_fn(missing).tolist()):
                self.cache[p] = e
        return torch.tensor([self.cache[p] for p in pairs])


def designs(T: int, which: str = "all") -> list[tuple[str, Any, str]]:
    """(row name, schedule, weighting) per row; weighting is 'uniform', 'exp' or 'fitted'.

    'core' keeps the rows whose trials are full's (free once full is computed) plus staged; 'all' adds
    the other timestep orders and antithetic noise, whose trials cost new model calls; 'orders' is full,
    default racing and those added rows only (to measure them on a slow model).
    """
    stratified = tuple(ordered_grid(master_grid(GRID, T), "stratified"))
    rows: list[tuple[str, Any, str]] = [("full", Full(stratified), "uniform")]
    if which == "orders":
        return rows + [("racing", Racing(), "uniform")] + design_variants()
    rows += [(f"full-{n}", Full(stratified[:n]), "uniform") for n in (20, 50, 100)]
    rows.append(("staged", Staged((50, 500), (5, 1)), "uniform"))
    rows.append(("racing", Racing(), "uniform"))
    rows += [(f"racing alpha={a:g}", Racing(alpha=a), "uniform") for a in (0.05, 0.01, 5e-4, 1e-4)]
    rows.append(("racing rounds=10 min=20", Racing(round_trials=10, min_trials=20), "uniform"))
    rows.append(("racing cap=100", Racing(cap=100), "uniform"))  # at most 1,000 calls for 10 labels
    rows.append(("racing alpha=0.01 cap=100", Racing(alpha=0.01, cap=100), "uniform"))
    rows.append(("racing weights=exp", Racing(), "exp"))
    rows.append(("racing weights=fitted", Racing(), "fitted"))
    rows.append(("full weights=fitted", Full(stratified), "fitted"))
    return rows + design_variants() if which == "all" else rows


def design_variants() -> list[tuple[str, Any, str]]:
    """Racing with the other timestep orders and with antithetic noise: trials that are not full's."""
    rows: list[tuple[str, Any, str]] = [
        (f"racing order={o}", Racing(order=o), "uniform") for o in ("golden", "random", "ascending")
    ]
    rows.append(("racing antithetic", Racing(antithetic=True), "uniform"))
    rows.append(("racing antithetic rounds=6", Racing(antithetic=True, round_trials=6), "uniform"))
    return rows


def error_fns(model, x0, cond, seed: int, batch_size: int) -> dict[bool, CachedErrors]:
    """One cached error function per noise design (plain, antithetic) for one image."""
    return {
        anti: CachedErrors(
            model_error_fn(model, x0, cond, NoiseBank(model.latent_shape, seed, antithetic=anti), "l2", batch_size)
        )
        for anti in (False, True)
    }


def full_errors(model, inputs: list, n_trials: int, seed: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Error matrices (N, K, n_trials) on the first n_trials of full's stratified trials, and their timesteps."""
    T = model.num_train_timesteps
    sched = Full(designs(T)[0][1].timesteps[:n_trials])
    cond = model.condition(model.class_names)
    mats = []
    for x in inputs:
        ledger = ErrorLedger(error_fns(model, model.encode(x), cond, seed, batch_size)[False], len(cond))
        sched.run(ledger, T)
        mats.append(torch.tensor(ledger.errors))
    return torch.stack(mats), torch.tensor(sched.timesteps)


@dataclass
class Fitted:
    """What is fitted on the separate labelled images: timestep weights and the probabilities' temperature."""

    weights: TimestepWeights
    temperatures: dict[str, float]  # per weighting: the NLL-optimal temperature of its weighted means


def fit(bench: Bench, n_trials: int, seed: int, batch_size: int) -> Fitted:
    model, T = bench.model, bench.model.num_train_timesteps
    err, ts = full_errors(model, bench.fit_inputs, n_trials, seed, batch_size)
    labels = torch.tensor(bench.fit_labels)
    scale = elbo_scale(model.latent_shape, T)
    weights = fit_weights(err, labels, ts, T)
    taus = {}
    for name, table in weight_tables(weights, T).items():
        w = torch.ones(len(ts), dtype=torch.float64) if table is None else table[ts]
        taus[name] = fit_temperature((err.double() * w).sum(2) / w.sum(), labels, scale)
    return Fitted(weights, taus)


def weight_tables(fitted: TimestepWeights, T: int) -> dict[str, torch.Tensor | None]:
    return {"uniform": None, "exp": exp_weights(T), "fitted": fitted.table(T)}


def run_bench(bench: Bench, fitted: Fitted, which: str, seed: int, batch_size: int, log, checkpoint) -> dict:
    """Replays every design on every image; checkpoint(result) is called every few images and at the end."""
    model, T = bench.model, bench.model.num_train_timesteps
    K = len(model.class_names)
    cands = from_labels(model.class_names)
    tables = weight_tables(fitted.weights, T)
    rows = designs(T, which)
    preds: dict[str, list[int]] = {name: [] for name, _, _ in rows}
    calls: dict[str, list[int]] = {name: [] for name, _, _ in rows}
    gaps: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in rows}
    cond = model.condition(model.class_names)
    began = time.perf_counter()
    for i, x in enumerate(bench.inputs):
        fns = error_fns(model, model.encode(x), cond, seed, batch_size)
        for name, sched, weighting in rows:
            ledger = ErrorLedger(fns[getattr(sched, "antithetic", False)], K, weights=tables[weighting])
            sched.run(ledger, T)
            res = summarize(ledger, cands, None, 0.0)
            preds[name].append(int(res.prediction))
            calls[name].append(ledger.calls)
            winner = ledger.ranking()[0]  # the paired gaps behind the result's probabilities (pipeline.summarize)
            gaps[name].append(torch.tensor([ledger.paired_gap(c, winner) for c in range(K)]))
        done = i + 1
        if done % max(1, min(10, len(bench.inputs) // 10)) == 0 or done == len(bench.inputs):
            log(f"{bench.name}: {done}/{len(bench.inputs)} images, {time.perf_counter() - began:.0f} s")
            result = {
                "model": bench.name,
                "n_images": done,
                "n_fit_images": len(bench.fit_inputs),
                "seed": seed,
                "elbo_scale": elbo_scale(model.latent_shape, T),
                "temperature": fitted.temperatures,
                "fitted_weights": {"edges": list(fitted.weights.edges), "values": list(fitted.weights.values)},
                "seconds": time.perf_counter() - began,
                "info": bench.info,
                "rows": table_rows(bench, rows, preds, calls, gaps, fitted.temperatures),
            }
            checkpoint(result)
    return result


def cross_fitted(gaps: torch.Tensor, labels: torch.Tensor, scale: float) -> dict[str, float]:
    """NLL and ECE with the temperature fitted on the other half of the benchmark images (2-fold)."""
    idx = torch.arange(len(labels))
    halves = (idx[::2], idx[1::2])
    probs = torch.empty_like(gaps, dtype=torch.float64)
    taus = []
    for fit_on, apply_to in (halves, halves[::-1]):
        taus.append(fit_temperature(gaps[fit_on], labels[fit_on], scale))
        probs[apply_to] = probabilities(gaps[apply_to], scale, taus[-1])
    return {
        "temperature_cv": taus,
        "nll_cv": float(-probs[idx, labels].clamp_min(1e-300).log().mean()),
        "ece_cv": expected_calibration_error(probs, labels),
    }


def table_rows(bench: Bench, rows, preds, calls, gaps, taus: dict[str, float]) -> list[dict]:
    """One dict per design: accuracy, calls per image, agreement with full, NLL and ECE of the probabilities."""
    n = len(preds["full"])
    labels = torch.tensor(bench.labels[:n])
    full_pred = torch.tensor(preds["full"])
    scale = elbo_scale(bench.model.latent_shape, bench.model.num_train_timesteps)
    out = []
    for name, sched, weighting in rows:
        p, g, tau = torch.tensor(preds[name]), torch.stack(gaps[name]), taus[weighting]
        out.append(
            {
                "model": bench.name,
                "name": name,
                "schedule": repr(sched) if len(repr(sched)) < 200 else type(sched).__name__,
                "weighting": weighting,
                "accuracy": float((p == labels).double().mean()),
                "calls_per_image": float(torch.tensor(calls[name], dtype=torch.float64).mean()),
                "max_calls": int(max(calls[name])),
                "agreement_with_full": float((p == full_pred).double().mean()),
                "nll_elbo": nll(g, labels, scale, 1.0),
                "nll_fitted": nll(g, labels, scale, tau),
                "ece_elbo": expected_calibration_error(probabilities(g, scale), labels),
                "ece_fitted": expected_calibration_error(probabilities(g, scale, tau), labels),
                **cross_fitted(g, labels, scale),
            }
        )
    return out


def markdown(res: dict) -> str:
    """A markdown table of one model's rows (for docs/efficiency.md)."""
    lines = [
        f"{res['model']}: {res['n_images']} images, seed {res['seed']}; temperature fitted on {res['n_fit_images']} "
        f"other labelled images: {', '.join(f'{k} {v:.3g}' for k, v in res['temperature'].items())}",
        "",
        "| design | accuracy % | calls / image | max calls | agreement with full % "
        "| NLL / ECE, tau = 1 | NLL / ECE, tau fitted apart | NLL / ECE, tau cross-fitted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['name']} | {100 * r['accuracy']:.1f} | {r['calls_per_image']:.0f} | {r['max_calls']} | "
            f"{100 * r['agreement_with_full']:.1f} | {r['nll_elbo']:.2f} / {r['ece_elbo']:.3f} | "
            f"{r['nll_fitted']:.2f} / {r['ece_fitted']:.3f} | {r['nll_cv']:.2f} / {r['ece_cv']:.3f} |"
        )
    return "\n".join(lines)


def _points(rows: dict[str, dict], names: list[str]) -> tuple[list[float], list[float]]:
    """(calls per image, accuracy %) of the named rows, by calls."""
    pts = sorted((rows[n]["calls_per_image"], 100 * rows[n]["accuracy"]) for n in names if n in rows)
    return [x for x, _ in pts], [y for _, y in pts]


def plot(results: list[dict], path: Path) -> None:
    """Accuracy against calls per image: the fixed budgets and the racing levels as lines, the rest as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7.5 * len(results), 5), squeeze=False)
    for ax, res in zip(axes[0], results):
        rows = {r["name"]: r for r in res["rows"]}
        xy = partial(_points, rows)
        fixed = ["full-20", "full-50", "full-100", "full"]
        levels = ["racing"] + [n for n in rows if n.startswith("racing alpha=") and n.count(" ") == 1]
        ax.plot(*xy(fixed), "s-", color="tab:gray", label="full on the first n stratified trials (n = 20 ... 500)")
        ax.plot(*xy(levels), "o-", color="tab:blue", label="racing, alpha = 0.05 ... 1e-4")
        ax.plot(*xy(["racing"]), "o", color="tab:green", markersize=11, label="racing (default, alpha 0.002)")
        ax.plot(*xy(["staged"]), "D", color="tab:red", markersize=9, label="staged (CIFAR-10: 5 1 / 50 500)")
        markers = iter("v^<>PXh*p")
        for name in rows:
            if name not in fixed and name not in levels and name != "staged":
                ax.plot(*xy([name]), next(markers, "x"), linestyle="", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("model calls per image (log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{res['model']}: {res['n_images']} images, 10 labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["gaussian", "mnist", "both"], default="both")
    ap.add_argument("--limit", type=int, default=None, help="images per model (default: 1000)")
    ap.add_argument("--fit-images", type=int, default=50, help="labelled images to fit weights and temperature")
    ap.add_argument("--fit-trials", type=int, default=500, help="trials per label on the fit images (<= 500)")
    ap.add_argument(
        "--designs",
        choices=["core", "all", "orders"],
        default="all",
        help="core: no extra orders or antithetic; orders: full, racing and those only",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--compile", action="store_true", help="MNIST: float32 compiled UNet (faster after compiling)")
    ap.add_argument("--mnist-model", default="builtin:mnist", help="the MNIST model (a folder for checkpoints)")
    ap.add_argument("--device", default=None, help="cpu or cuda for the MNIST model (default: the best available)")
    ap.add_argument("--json", action="store_true", help='print {"rows": [...]} on stdout')
    ap.add_argument("--markdown", action="store_true", help="print markdown tables on stdout")
    ap.add_argument("--from-json", nargs="+", default=None, help="only re-render saved results (table, plot)")
    ap.add_argument("--out", default=None, help="folder for efficiency_<model>.json and efficiency.png")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.from_json:
        results = [json.loads(Path(f).read_text()) for f in args.from_json]
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            plot(results, Path(args.out) / f"efficiency_{'_'.join(r['model'] for r in results)}.png")
        print("\n\n".join(markdown(r) for r in results))
        return 0
    n = args.limit or 1000
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    def checkpoint(result: dict) -> None:
        if out is not None:  # partial results survive an interrupted run
            (out / f"efficiency_{result['model']}.json").write_text(json.dumps(result, indent=1) + "\n")

    results = []
    for name in ("gaussian", "mnist") if args.model == "both" else (args.model,):
        bench = (
            gaussian_bench(n, args.fit_images, args.seed)
            if name == "gaussian"
            else mnist_bench(n, args.fit_images, args.mnist_model, args.device, args.compile)
        )
        fitted = fit(bench, args.fit_trials, args.seed, args.batch_size)
        values = [round(v, 3) for v in fitted.weights.values]
        log(f"{name}: fitted weights {values}, temperatures {fitted.temperatures}")
        if out is not None:
            fitted.weights.save(out / f"weights_{name}.json")
        results.append(run_bench(bench, fitted, args.designs, args.seed, args.batch_size, log, checkpoint))
    if out is not None:
        plot(results, out / f"efficiency_{'_'.join(r['model'] for r in results)}.png")
    if args.json:
        print(json.dumps({"rows": [row for res in results for row in res["rows"]]}, indent=1))
    elif args.markdown:
        print("\n\n".join(markdown(r) for r in results))
    else:
        for res in results:
            print(f"\n{res['model']}: {res['n_images']} images, temperatures {res['temperature']}")
            print(f"{'name':<26} {'accuracy':>8} {'calls/img':>9} {'agree':>6} {'ECE fit':>7}")
            for r in res["rows"]:
                print(
                    f"{r['name']:<26} {100 * r['accuracy']:>8.1f} {r['calls_per_image']:>9.0f} "
                    f"{100 * r['agreement_with_full']:>6.1f} {r['ece_fitted']:>7.3f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

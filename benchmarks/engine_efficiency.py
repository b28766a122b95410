"""Engine efficiency and fill: how close the classifier comes to its model's own speed (issue 13, Measure).

One process, one machine, one run:

1. peak: the bundled MNIST UNet's own rows/s (adapter.predict_noise on random rows, nothing else) at each
   of --peak-batches, best of --repeats rounds; the best batch size and its rows/s. Measured before and
   after the engine, the higher of the two counts (the denominator is not flattered by a cold start).
2. engine: the demo's classification (`diffusion-classifier demo`: builtin:mnist, its default schedule,
   batch 100) of the first --images digits of the demo's selection, through DiffusionClassifier.classify_stream
   (the packer). rows = the model calls the results count (padding rows excluded); engine efficiency =
   engine rows/s / peak rows/s. fill = rows / (model calls made x batch size).
   Rates per wall second and per CPU second of this process: on a machine shared with other jobs only the
   latter compares (with one thread: OMP_NUM_THREADS=1); on an idle machine the wall rates are the answer.
3. fill of racing with 10 and 100 labels on the analytic Gaussian model (class-conditional, cheap; its
   errors separate the classes, so races end as real ones do) over --fill-images images.
4. --demo: the `demo` command itself on --images digits (records, figures and summary included; the
   discriminative baseline is computed first, untimed): its wall time and rows/s.

    OMP_NUM_THREADS=2 python benchmarks/engine_efficiency.py --images 100 --demo \\
        --note "2 cores, idle" --json benchmarks/results/engine-efficiency-cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import redirect_stdout
from datetime import date
from io import StringIO
from pathlib import Path

import torch

from diffusion_classifier import DiffusionClassifier, Racing
from diffusion_classifier.cli import main as cli_main
from diffusion_classifier.data.datasets import open_dataset, select_indices
from diffusion_classifier.models.gaussian import GaussianClassModel
from diffusion_classifier.runs.demo import DATASET, MODEL, baseline

DEMO_BATCH = 100  # `demo --batch-size`'s default


class Clock:
    """Wall and CPU seconds (of this process, all its threads) since it started."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": time.process_time() - self.cpu}


def rates(rows: int, clock: Clock) -> dict[str, float]:
    """Rows per wall second and per CPU second (the latter holds on a machine shared with other jobs)."""
    t = clock.read()
    return {**t, "rows_per_s": rows / t["seconds"], "rows_per_cpu_s": rows / t["cpu_seconds"]}


def peak(model, batch_sizes: list[int], repeats: int, seconds: float = 1.0) -> dict[int, dict[str, float]]:
    """Rows/s of model.predict_noise alone at each batch size: the best of `repeats` rounds of >= seconds."""
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.randn(b, *model.latent_shape, generator=g)
            t, c = torch.randint(0, 1000, (b,), generator=g), torch.randint(0, 10, (b,), generator=g)
            model.predict_noise(x, t, c)  # warm-up
            best = {"rows_per_s": 0.0, "rows_per_cpu_s": 0.0}
            for _ in range(repeats):
                n, clock = 0, Clock()
                while clock.read()["seconds"] < seconds or n == 0:
                    model.predict_noise(x, t, c)
                    n += 1
                best = {k: max(v, best[k]) for k, v in rates(n * b, clock).items() if k in best}
            out[b] = best
    return out


def counting(clf: DiffusionClassifier) -> list[int]:
    """Count the classifier's model calls: the rows each was given (padding included)."""
    calls: list[int] = []
    predict = clf.model.predict_noise

    def counted(x_t, t, cond):
        calls.append(len(x_t))
        return predict(x_t, t, cond)

    clf.model.predict_noise = counted
    return calls


def classify(clf: DiffusionClassifier, images, batch_size: int, **kw) -> dict:
    """Classify images through the packer; rows, model calls, seconds, rows/s and fill."""
    calls, clock = counting(clf), Clock()
    results = [r for _, r in clf.classify_stream(images, batch_size=batch_size, **kw)]
    spent = rates(sum(r.calls for r in results if not isinstance(r, BaseException)), clock)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    rows = sum(r.calls for r in results)
    return {"images": len(results), "rows": rows, "model_calls": len(calls), "batch_size": batch_size, **spent,
            "fill": rows / (len(calls) * batch_size), "rows_per_image": rows / len(results)}  # fmt: skip


def engine(images: int, batch_size: int) -> dict:
    clf = DiffusionClassifier.from_pretrained(MODEL, device="cpu")
    dataset = open_dataset(DATASET)
    indices = select_indices(dataset, images, seed=0)  # the demo's --limit selection
    schedule, loss = clf.default_schedule  # the demo runs the model's own schedule
    return classify(clf, [dataset.image(i) for i in indices], batch_size, schedule=schedule, loss=loss)


def gaussian_fill(classes: int, images: int, batch_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    model = GaussianClassModel(torch.randn(classes, 1, 4, 4, generator=g) * 0.6, std=1.0)
    x0s = model.sample(torch.arange(images) % classes, generator=g)
    return classify(DiffusionClassifier(model), list(x0s), batch_size, schedule=Racing())


def demo(images: int) -> dict:
    """The demo command's wall time on `images` digits (the baseline cached first, untimed)."""
    with tempfile.TemporaryDirectory() as out:
        baseline(Path(out), [0])
        clock = Clock()
        with redirect_stdout(StringIO()) as printed:
            code = cli_main(["demo", "--out", out, "--limit", str(images), "--json", "-q"])
        result = json.loads(printed.getvalue())
        rows = round(result["calls_per_image"] * result["n"])
        return {"exit": code, "images": result["n"], "accuracy": result["accuracy"], "rows": rows, **rates(rows, clock)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100, help="demo digits to classify (1000: the full demo)")
    ap.add_argument("--batch-size", type=int, default=DEMO_BATCH)
    ap.add_argument("--peak-batches", type=int, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fill-images", type=int, default=1000, help="Gaussian images per racing fill")
    ap.add_argument("--demo", action="store_true", help="also time the demo command itself")
    ap.add_argument("--note", default="", help="the machine's state, recorded (e.g. 'idle')")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    model = DiffusionClassifier.from_pretrained(MODEL, device="cpu").model
    before = peak(model, args.peak_batches, args.repeats)
    eng = engine(args.images, args.batch_size)
    after = peak(model, args.peak_batches, args.repeats)
    best = {k: max(max(before[b][k], after[b][k]) for b in args.peak_batches) for k in ("rows_per_s", "rows_per_cpu_s")}
    report = {
        "peak": {**best, "before": before, "after": after},
        "engine": eng,
        "engine_efficiency": {k: eng[k] / best[k] for k in best},
        "fill": {
            "demo": eng["fill"],
            "racing_10_labels": gaussian_fill(10, args.fill_images, args.batch_size),
            "racing_100_labels": gaussian_fill(100, args.fill_images, args.batch_size),
        },
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads; {args.note}",
        "date": date.today().isoformat(),
        "command": "python benchmarks/engine_efficiency.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("json", "note", "demo")) + " --demo" * args.demo,
    }  # fmt: skip
    if args.demo:
        report["demo"] = demo(args.images)
        report["demo_efficiency"] = {k: report["demo"][k] / best[k] for k in best}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

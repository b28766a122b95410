"""Figures for run reports (matplotlib, Agg canvas: no display, no global backend change)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def confusion_figure(counts: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """The confusion matrix, rows normalised to the true class; counts written in cells when few classes."""
    k = len(classes)
    size = min(4 + 0.35 * k, 16)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    rows = counts.sum(1, keepdims=True)
    ax.imshow(counts / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
    if k <= 20:
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    return _save(fig, path)


def accuracy_calls_figure(series: dict[str, dict], path: Path) -> Path:
    """Top-1 accuracy against model calls per image: one marker (with its 95 % interval) per run, and a
    line where a run's saved errors let accuracy be recomputed from the first m trials per candidate."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, s in series.items():
        (line,) = ax.plot([], [])
        color = line.get_color()
        if s.get("curve"):
            calls, acc = zip(*s["curve"])
            ax.plot(calls, acc, "-", color=color, alpha=0.6)
        lo, hi = s["interval"]
        yerr = [[max(s["accuracy"] - lo, 0.0)], [max(hi - s["accuracy"], 0.0)]]  # rounding: 100 % above 0.99999
        ax.errorbar([s["calls"]], [s["accuracy"]], yerr=yerr, fmt="o", color=color, label=name, capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("model calls per image")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def error_timestep_figure(
    timesteps: Sequence[int], true_err: Sequence[float], wrong_err: Sequence[float], path: Path
) -> Path:
    """Mean noise-prediction error per timestep for the true class and the best wrong class."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(timesteps, true_err, "o-", label="true class", markersize=3)
    ax.plot(timesteps, wrong_err, "s-", label="best wrong class", markersize=3)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("mean error ||eps - eps_theta||^2")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)

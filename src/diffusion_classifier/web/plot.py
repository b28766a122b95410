"""The page's figure: mean error against timestep for the leading labels, and their paired gap to the winner."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def leading(errors: dict[str, dict[str, list]], k: int) -> list[str]:
    """The k keys the schedule ranks first: most trials (survivors) first, then lowest mean error."""
    return sorted(errors, key=lambda key: (-len(errors[key]["values"]), float(np.mean(errors[key]["values"] or [0]))))[
        :k
    ]


def binned(t: np.ndarray, v: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of v in each timestep bin that holds a trial, at the bin's mean t."""
    idx = np.clip(np.digitize(t, edges) - 1, 0, len(edges) - 2)
    full = np.unique(idx)
    return np.array([t[idx == b].mean() for b in full]), np.array([v[idx == b].mean() for b in full])


def error_figure(errors: dict[str, dict[str, list]], T: int, k: int = 4, bins: int = 20) -> Figure:
    """Top: each leading label's mean error per timestep bin. Bottom: its error minus the winner's on the
    same trials (every schedule here evaluates a label on a prefix of the winner's trials), per bin:
    where the curve sits above 0 the label lost, and the timesteps where it rises most decided."""
    keys = leading(errors, k)
    edges = np.linspace(0, T, bins + 1)
    fig = Figure(figsize=(6.4, 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True)
    winner = np.asarray(errors[keys[0]]["values"], dtype=np.float64)
    bottom.axhline(0.0, color="black", linewidth=0.8)  # the winner itself
    for key in keys:
        t = np.asarray(errors[key]["timesteps"], dtype=np.float64)
        v = np.asarray(errors[key]["values"], dtype=np.float64)
        (line,) = top.plot(*binned(t, v, edges), "o-", markersize=3, label=f"{key} ({len(v)} trials)")
        if key != keys[0] and len(v):
            bottom.plot(*binned(t, v - winner[: len(v)], edges), "o-", markersize=3, color=line.get_color())
    top.set_yscale("log")
    top.set_ylabel("mean error")
    top.legend(fontsize=8)
    bottom.set_ylabel(f"error - {keys[0]}'s")
    bottom.set_xlabel("timestep t")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

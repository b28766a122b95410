"""Winoground (Thrush et al. 2022): its data, the text / image / group scores, and resumable scoring runs.

Each example holds two images and two captions with the same words in another order; caption j
describes image j. A scorer (matching.DiffusionMatcher, clip_baseline.ClipMatcher) gives the four
pair scores cJ_iK (caption J with image K). Definitions (Thrush et al. 2022, SPEC.md §4):

    text  : for both images the right caption wins   c0_i0 > c1_i0 and c1_i1 > c0_i1
    image : for both captions the right image wins   c0_i0 > c0_i1 and c1_i1 > c1_i0
    group : both

A run is the run engine's (runs.execute): config.json holds a WinogroundConfig and each example is one
record in the crash-safe files of runs.RunStore (append-only JSON lines, fsynced; a torn last line is
ignored), so a rerun resumes, retries failed examples, and torchrun shards the examples.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.images import DEFAULT_OPTIONS, ImageOptions, load_image
from ..errors import UserInputError
from ..reporting.metrics import wilson_interval
from ..runs.engine import RunStore, Shard, StoredConfig, Work, config_kind, execute, package_versions
from .scores import PairScorer

log = logging.getLogger(__name__)

HUB_ID = "facebook/winoground"  # gated: accept the terms on the hub, then `hf auth login`
TAGS = ("Object", "Relation", "Both")  # the collapsed tags, in the paper's order
FIELDS = ("id", "caption_0", "caption_1", "image_0", "image_1", "collapsed_tag")
PAIRS = ("c0_i0", "c0_i1", "c1_i0", "c1_i1")


# --- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinogroundExample:
    """One example's text and tags; its images are loaded on request (WinogroundData.images)."""

    id: int | str
    caption_0: str
    caption_1: str
    collapsed_tag: str
    tag: str = ""
    secondary_tag: str = ""
    num_main_preds: int | None = None


class WinogroundData:
    """The examples of a Winoground copy; images(i) decodes example i's two images (may raise)."""

    def __init__(
        self, source: str, examples: Sequence[WinogroundExample], load: Callable[[int], tuple[Image.Image, ...]]
    ):
        self.source = source
        self.examples = list(examples)
        self._load = load

    def __len__(self) -> int:
        return len(self.examples)

    def images(self, i: int) -> tuple[Image.Image, Image.Image]:
        img0, img1 = self._load(i)
        return img0, img1


def example_from_row(row: Mapping[str, Any]) -> WinogroundExample:
    return WinogroundExample(
        id=row["id"],
        caption_0=str(row["caption_0"]),
        caption_1=str(row["caption_1"]),
        collapsed_tag=str(row["collapsed_tag"]),
        tag=str(row.get("tag") or ""),
        secondary_tag=str(row.get("secondary_tag") or ""),
        num_main_preds=row.get("num_main_preds"),
    )


def open_winoground(
    data_dir: str | Path | None = None, split: str = "test", image_options: ImageOptions = DEFAULT_OPTIONS
) -> WinogroundData:
    """A local copy in the release layout (DIR/examples.jsonl, DIR/images/*.png), a datasets save_to_disk
    folder, or the hub dataset (from the local cache when HF_HUB_OFFLINE is set). Images are decoded by
    data.images.load_image with image_options."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if (root / "examples.jsonl").is_file():
            return read_release(root, image_options)
        if not root.is_dir():
            raise UserInputError(f"Winoground folder not found: {root}")
    return read_hub(str(data_dir) if data_dir is not None else HUB_ID, split, image_options)


def read_release(root: Path, image_options: ImageOptions = DEFAULT_OPTIONS) -> WinogroundData:
    """The original release layout: examples.jsonl (one JSON object per line) and images/NAME.png.

    An example whose image is missing or lies outside DIR/images fails alone when it is scored; a copy
    where no example has its images is refused at once.
    """
    rows = []
    for n, line in enumerate((root / "examples.jsonl").read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserInputError(f"{root / 'examples.jsonl'} line {n} is not JSON") from None
        if not isinstance(row, dict):
            raise UserInputError(f"{root / 'examples.jsonl'} line {n} is not a JSON object")
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise UserInputError(f"{root / 'examples.jsonl'} line {n} lacks {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise UserInputError(f"{root / 'examples.jsonl'} holds no examples")
    paths = [(release_image(root, r["image_0"]), release_image(root, r["image_1"])) for r in rows]
    bad = [p for pair in paths for p in pair if isinstance(p, UserInputError)]
    if all(any(isinstance(p, UserInputError) for p in pair) for pair in paths):
        raise UserInputError(f"no Winoground example has its two images: {bad[0]} ({len(bad)} bad of {2 * len(rows)})")

    def load(i: int) -> tuple[Image.Image, ...]:
        for p in paths[i]:
            if isinstance(p, UserInputError):
                raise p
        return tuple(load_image(p, image_options) for p in paths[i])

    return WinogroundData(str(root.resolve()), [example_from_row(r) for r in rows], load)


def release_image(root: Path, name: Any) -> Path | UserInputError:
    """DIR/images/NAME (NAME.png when NAME has no suffix), or the error that refuses it: examples.jsonl
    may name files inside DIR/images only (no absolute paths, no '..', no symlink leading out)."""
    name = str(name)
    folder = root.resolve() / "images"
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\0" in name:
        return UserInputError(f"Winoground image {name!r} is not a file name inside {folder}: refused")
    path = folder / rel
    path = path if path.suffix else path.with_suffix(".png")
    try:
        inside = path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        return UserInputError(f"Winoground image {name!r} leads outside {folder} (a symlink): refused")
    if not path.is_file():
        return UserInputError(f"Winoground image not found: {path}")
    return path


def read_hub(source: str, split: str = "test", image_options: ImageOptions = DEFAULT_OPTIONS) -> WinogroundData:
    """The hub dataset (or a save_to_disk folder), image columns decoded lazily."""
    from ..data.datasets import _import_datasets, _load_split

    datasets = _import_datasets()
    try:
        ds = _load_split(datasets, source, split)
    except UserInputError as exc:
        if source != HUB_ID:
            raise
        raise UserInputError(
            f"{exc}. Winoground is gated: accept its terms at https://huggingface.co/datasets/{HUB_ID} and run "
            "`hf auth login` (online), or pass --data-dir with a local copy (examples.jsonl + images/)"
        ) from None
    missing = [f for f in FIELDS if f not in ds.column_names]
    if missing:
        raise UserInputError(f"{source} is not Winoground: it lacks the column(s) {', '.join(missing)}")
    rows = ds.remove_columns(["image_0", "image_1"])
    examples = [example_from_row(r) for r in rows]
    images = ds.select_columns(["image_0", "image_1"])
    for col in ("image_0", "image_1"):
        images = images.cast_column(col, datasets.Image(decode=False))

    def load(i: int) -> tuple[Image.Image, ...]:
        return tuple(load_image(images[i][c], image_options, name=f"example {i} {c}") for c in ("image_0", "image_1"))

    return WinogroundData(source, examples, load)


# --- scores --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairScores:
    """The four pair scores of an example: cJ_iK is caption J with image K (higher = better match)."""

    c0_i0: float
    c0_i1: float
    c1_i0: float
    c1_i1: float

    @classmethod
    def from_matrix(cls, scores: torch.Tensor) -> PairScores:
        """From scores[k, j] of images (img0, img1) x captions (caption_0, caption_1)."""
        s = scores.tolist()
        return cls(c0_i0=s[0][0], c0_i1=s[1][0], c1_i0=s[0][1], c1_i1=s[1][1])

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def text_correct(s: PairScores) -> bool:
    """For both images the right caption scores higher."""
    return s.c0_i0 > s.c1_i0 and s.c1_i1 > s.c0_i1


def image_correct(s: PairScores) -> bool:
    """For both captions the right image scores higher."""
    return s.c0_i0 > s.c0_i1 and s.c1_i1 > s.c1_i0


def group_correct(s: PairScores) -> bool:
    return text_correct(s) and image_correct(s)


@dataclass(frozen=True)
class Rate:
    """k successes out of n, with the Wilson 95 % interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)


@dataclass(frozen=True)
class Scores:
    """Text, image and group scores of a set of examples."""

    n: int
    text: Rate
    image: Rate
    group: Rate

    @classmethod
    def of(cls, pairs: Sequence[PairScores]) -> Scores:
        n = len(pairs)
        return cls(
            n,
            Rate(sum(map(text_correct, pairs)), n),
            Rate(sum(map(image_correct, pairs)), n),
            Rate(sum(map(group_correct, pairs)), n),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        for name, rate in (("text", self.text), ("image", self.image), ("group", self.group)):
            out[f"{name}_score"] = rate.value
        for name, rate in (("text", self.text), ("image", self.image), ("group", self.group)):
            out[f"{name}_interval"] = list(rate.interval)
        return out


@dataclass(frozen=True)
class WinogroundSummary:
    """One scorer's results: overall, by collapsed tag, and each example's pair scores."""

    scorer: str
    overall: Scores
    by_tag: dict[str, Scores]
    examples: list[tuple[int | str, PairScores]]
    expected: int  # examples the run covers
    failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            **self.overall.to_dict(),
            "expected": self.expected,
            "failed": self.failed,
            "by_tag": {tag: s.to_dict() for tag, s in self.by_tag.items()},
            "examples": [{"id": i, **s.to_dict()} for i, s in self.examples],
        }


def summarize(records: Mapping[int, dict[str, Any]], scorer: str, expected: int | None = None) -> WinogroundSummary:
    """The summary of finished records for one scorer (failed examples are counted apart, not scored)."""
    ok = [r for r in records.values() if r.get("status") == "ok" and scorer in r["scores"]]
    pairs = [PairScores(**r["scores"][scorer]) for r in ok]
    tags = [r["collapsed_tag"] for r in ok]
    order = [t for t in TAGS if t in tags] + sorted(set(tags) - set(TAGS))
    by_tag = {t: Scores.of([p for p, tag in zip(pairs, tags) if tag == t]) for t in order}
    return WinogroundSummary(
        scorer=scorer,
        overall=Scores.of(pairs),
        by_tag=by_tag,
        examples=[(r["id"], p) for r, p in zip(ok, pairs)],
        expected=len(records) if expected is None else expected,
        failed=sum(r.get("status") != "ok" for r in records.values()),
    )


# --- runs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinogroundConfig(StoredConfig):
    """What decides a Winoground run's records; saved as config.json. model_info and versions are
    recorded for the reader only (not part of the identity a resumed run must match)."""

    data: str
    examples: int
    scorers: tuple[str, ...]  # "diffusion" (the --model) and/or "clip:MODEL" baselines
    model: str | None = None
    t_interval: int | None = None
    seed: int = 0
    noise_file: str | None = None
    loss: str = "l2"
    normalize: bool = False
    image_size: int | None = None
    dtype: str | None = None
    limit: int | None = None
    exif_orientation: bool = False
    kind: str = "winoground"
    model_info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)

    KIND = "winoground"
    NOT_IDENTITY = ("model_info", "versions")


def is_winoground_run(run_dir: str | Path) -> bool:
    return config_kind(RunStore(run_dir)) == WinogroundConfig.KIND


def score_example(data: WinogroundData, i: int, scorers: Sequence[PairScorer]) -> dict[str, Any]:
    """The record of example i: its four pair scores under every scorer, or a failed record."""
    ex = data.examples[i]
    rec: dict[str, Any] = {"index": i, "id": ex.id, "collapsed_tag": ex.collapsed_tag}
    began = time.perf_counter()
    try:
        images = data.images(i)
    except Exception as exc:  # any decode failure is this example's problem, not the run's
        log.info("Winoground example %s failed to decode: %s", ex.id, exc)  # the CLI reports it, once
        return {**rec, "status": "failed", "error": f"{exc.__class__.__name__}: {exc}"}
    # scorer errors (a short noise file, a bad model) concern every example: they stop the run
    scores = {s.name: PairScores.from_matrix(s(images, (ex.caption_0, ex.caption_1))).to_dict() for s in scorers}
    return {**rec, "status": "ok", "scores": scores, "seconds": round(time.perf_counter() - began, 4)}


def winoground_work(
    data: WinogroundData, scorers: Sequence[PairScorer], n: int, config: WinogroundConfig | None = None
) -> Work:
    """The engine's Work of a Winoground run: a record per example of the first n, every scorer's pair scores."""
    return Work(
        config,
        tuple(range(n)),
        lambda todo, rank: (score_example(data, i, scorers) for i in todo),
        unit="Winoground examples",
    )


def run_winoground(
    data: WinogroundData,
    load: Callable[[], Sequence[PairScorer]],
    out: str | Path | None = None,
    limit: int | None = None,
    progress: bool = False,
    shard: Shard | None = None,
    describe: Callable[[Sequence[PairScorer], int], WinogroundConfig] | None = None,
) -> tuple[list[PairScorer], dict[int, dict[str, Any]]]:
    """Score the first `limit` examples (all by default) through the run engine (runs.execute); the scorers and
    the records of every example the run covers.

    load: returns the scorers (called once the run directory is locked). With a run directory out,
    describe(scorers, n) gives the config it is claimed with; every record is appended as soon as it is done
    (crash-safe, to the shard's own file), so a rerun resumes and retries failed examples.
    """
    n = len(data) if limit is None else min(limit, len(data))
    if out is not None and describe is None:
        raise ValueError("a Winoground run directory needs describe: the config it is claimed with")
    loaded: list[PairScorer] = []

    def prepare() -> Work:
        loaded.extend(load())
        return winoground_work(data, loaded, n, describe(loaded, n) if describe is not None else None)

    records = execute(prepare, RunStore(out, WinogroundConfig) if out is not None else None, shard, progress)
    return loaded, records


# --- reports -------------------------------------------------------------------------------------


def summarize_run(run_dir: str | Path) -> list[WinogroundSummary]:
    """Each scorer's summary of a Winoground run directory, finished or not."""
    store = RunStore(run_dir, WinogroundConfig)
    if config_kind(store) != WinogroundConfig.KIND:
        raise UserInputError(f"{run_dir} is not a Winoground run directory (written by `winoground --out`)")
    config = store.require_config()
    records = store.records()
    return [summarize(records, name, config.examples) for name in config.scorers]


def results_json(summaries: list[WinogroundSummary]) -> dict[str, Any]:
    """The first scorer's results at the top level; the others under "baselines" by name."""
    out = summaries[0].to_dict()
    if len(summaries) > 1:
        out["baselines"] = {s.scorer: s.to_dict() for s in summaries[1:]}
    return out


def markdown_table(s: WinogroundSummary) -> str:
    """Text, image and group scores (%, 95 % Wilson interval) overall and by collapsed tag."""
    lines = [
        f"{s.scorer}: {s.overall.n} of {s.expected} examples" + (f", {s.failed} failed" if s.failed else ""),
        "",
        "| subset | n | text | image | group |",
        "|---|---|---|---|---|",
    ]
    for name, scores in [("all", s.overall), *s.by_tag.items()]:
        cells = [_pct(r.value, r.interval) for r in (scores.text, scores.image, scores.group)]
        lines.append(f"| {name} | {scores.n} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _pct(value: float, interval: tuple[float, float]) -> str:
    if value != value:  # nan: no examples
        return "-"
    return f"{100 * value:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"

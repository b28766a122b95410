"""Dataset evaluation runs: the run configuration, the crash-safe record store, resume, and sharding.

A run directory holds config.json (the RunConfig) and records-rankNNNNN.jsonl files: one JSON line
per finished image, appended with a single write, flushed and fsynced. A SIGKILL can only leave a
torn last line, which the reader ignores and the next writer of that file cuts off; so a rerun of
the same command resumes where the run stopped and never records an image twice. Each process of a
sharded run (torchrun / accelerate launch) writes its own file; readers merge them by image index.

Sharding is by position in the selected index list (position % world_size == rank): disjoint and
complete. The trial noise depends only on (seed, trial index), never on the image or the process,
so a sharded run gives the records of a single-process run, image for image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .data.datasets import EvalDataset
from .data.prompts import Candidates, read_prompts_csv
from .errors import UserInputError
from .estimator import Loss
from .pipeline import ClassificationResult, DiffusionClassifier
from .schedules import Schedule

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RECORDS_GLOB = "records-rank*.jsonl"


# --- processes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's place in a multi-process run (RANK / WORLD_SIZE / LOCAL_RANK, as torchrun sets them)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Shard:
        env = os.environ
        shard = cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
        if not 0 <= shard.rank < shard.world_size:
            raise UserInputError(f"RANK={shard.rank} is not below WORLD_SIZE={shard.world_size}")
        return shard

    def take(self, indices: tuple[int, ...]) -> tuple[int, ...]:
        """This process's share: every world_size-th selected image, starting at position rank."""
        return indices[self.rank :: self.world_size]

    def device(self, device: str | None) -> str | None:
        """The device this process uses: its own GPU (cuda:LOCAL_RANK) when several processes share CUDA."""
        import torch

        if device in (None, "auto", "cuda") and self.world_size > 1 and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device


def start_group(shard: Shard) -> bool:
    """Join the process group of a launcher (gloo: only barriers are needed); False when running alone."""
    import torch.distributed as dist

    if shard.world_size == 1 or "MASTER_ADDR" not in os.environ or not dist.is_available():
        return False
    if not dist.is_initialized():
        # images take minutes on slow hardware and ranks finish apart: wait long at the final barrier
        dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world_size, timeout=timedelta(days=7))
    return True


def barrier(grouped: bool) -> None:
    if grouped:
        import torch.distributed as dist

        dist.barrier()


def claim_in_turn(shard: Shard, grouped: bool, claim: Callable[[], None]) -> None:
    """Rank 0 claims the run directory first (creating it); the other ranks then check theirs against it."""
    if shard.rank == 0:
        claim()
    barrier(grouped)
    if shard.rank != 0:
        claim()


def end_group(grouped: bool) -> None:
    if grouped:
        import torch.distributed as dist

        dist.destroy_process_group()


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's records; saved as config.json beside them.

    Two runs may share a directory only if their identity() is equal: model_info, versions and
    save_errors are recorded for the reader but do not change which label an image gets.
    """

    model: str
    dataset: str
    split: str
    schedule: dict[str, Any]
    loss: str
    seed: int
    candidates: dict[str, list[str]]  # {"labels": [...], "conditions": [...]}
    images: int  # how many images the run covers (after --limit / --subset)
    limit: int | None = None
    subset: tuple[int, ...] | None = None
    noise_file: str | None = None
    image_size: int | None = None
    dtype: str | None = None
    exif_orientation: bool = False  # images turned by their EXIF Orientation tag (data/images.py)
    options: dict[str, Any] = field(default_factory=dict)  # weighting, temperature, shortlist (None = default)
    model_info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    save_errors: bool = False

    NOT_IDENTITY = ("model_info", "versions", "save_errors")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, as stored

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_IDENTITY}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if d.get("subset") is not None:
            d["subset"] = tuple(d["subset"])
        return cls(**d)

    def candidates_obj(self) -> Candidates:
        return Candidates(tuple(self.candidates["labels"]), tuple(self.candidates["conditions"]))


def schedule_dict(schedule: Schedule) -> dict[str, Any]:
    """A schedule as JSON: its class name and its dataclass fields."""
    fields = dataclasses.asdict(schedule) if dataclasses.is_dataclass(schedule) else {"repr": repr(schedule)}
    return {"kind": type(schedule).__name__, **json.loads(json.dumps(fields))}


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change a run's numbers."""
    out = {"python": sys.version.split()[0]}
    for name in ("diffusion-classifier", "torch", "diffusers", "transformers", "datasets", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):  # optional packages may be absent
            out[name] = metadata.version(name)
    return out


# --- the record store --------------------------------------------------------------------------------


class RunStore:
    """A run directory: its config and its records (merged over all rank files, torn lines ignored)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG_FILE

    def read_config(self) -> RunConfig | None:
        if not self.config_path.is_file():
            return None
        try:
            return RunConfig.from_dict(json.loads(self.config_path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise UserInputError(f"{self.config_path} is not a run configuration ({exc.__class__.__name__})") from None

    def require_config(self) -> RunConfig:
        config = self.read_config()
        if config is None:
            raise UserInputError(f"{self.dir} is not a run directory (no {CONFIG_FILE}); create one with `eval --out`")
        return config

    def claim(self, config: RunConfig) -> None:
        """Write config.json for a new run, or check that an existing run has the same configuration."""
        old = self.read_config()
        if old is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.config_path, json.dumps(config.to_dict(), indent=2) + "\n")
            return
        a, b = old.identity(), config.identity()
        diff = [k for k in a if a[k] != b.get(k)]
        if diff:
            raise UserInputError(
                f"{self.dir} holds a run with another configuration ({', '.join(diff)} differ); "
                "use a new --out directory, or rerun with the same settings to resume"
            )
        if old.versions != config.versions:
            log.warning("resuming %s with other package versions: %s -> %s", self.dir, old.versions, config.versions)

    def clear(self) -> None:
        """Delete this run's config and records (only the files a run writes)."""
        for path in [self.config_path, *self.record_files()]:
            path.unlink(missing_ok=True)

    def record_files(self) -> list[Path]:
        return sorted(self.dir.glob(RECORDS_GLOB))

    def records(self) -> dict[int, dict[str, Any]]:
        """Finished images by dataset index (the first record of an index wins; torn lines are skipped)."""
        out: dict[int, dict[str, Any]] = {}
        for path in self.record_files():
            for rec in read_records(path):
                out.setdefault(int(rec["index"]), rec)
        return dict(sorted(out.items()))

    def writer(self, rank: int) -> RecordWriter:
        return RecordWriter(self.dir / f"records-rank{rank:05d}.jsonl")


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of one file: lines that end in a newline and parse as a JSON object."""
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # a torn last line from a killed writer
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("skipping a corrupt line in %s", path)
                continue
            if isinstance(rec, dict) and "index" in rec:
                yield rec


class RecordWriter:
    """Appends records to one file, one complete line per write, flushed and fsynced (crash-safe)."""

    def __init__(self, path: Path):
        self.path = path
        self._cut_torn_tail()
        self._f = path.open("ab")

    def _cut_torn_tail(self) -> None:
        """Drop a partial last line left by a kill, so the next record starts on a line of its own."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with self.path.open("r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        self._f.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_atomic(path: Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- evaluation --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalJob:
    """What to evaluate and how: the images, the candidates and the classifier settings."""

    dataset: EvalDataset
    indices: tuple[int, ...]
    candidates: Candidates
    schedule: Schedule
    loss: Loss
    seed: int = 0
    noise_file: str | None = None
    batch_size: int = 32
    save_errors: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # more DiffusionClassifier.__call__ keywords


def eval_candidates(
    clf: DiffusionClassifier,
    dataset: EvalDataset,
    indices: tuple[int, ...],
    labels: list[str] | None = None,
    template: str | None = None,
    prompts: Candidates | None = None,
) -> Candidates:
    """The candidates for a dataset: given ones, else the published prompts (text models) or the
    dataset's class names (text) / the model's class names (class models); every label must be one."""
    text = clf.model.conditioning == "text"
    if text and prompts is None and labels is None and template is None and dataset.prompts is not None:
        prompts = read_prompts_csv(dataset.prompts)
    if text and labels is None and prompts is None:
        labels = dataset.class_names
    if not text and labels is None and not set(dataset.labels) <= set(clf.model.class_names or []):
        labels = _model_accepts(clf, dataset.class_names)  # e.g. "tench" for DiT's "tench, Tinca tinca"
    cands = clf.candidates(labels, template, prompts)
    missing = sorted({dataset.labels[i] for i in indices} - set(cands.labels))
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        raise UserInputError(
            f"dataset label(s) {shown} are not among the candidate labels ({', '.join(cands.unique_labels[:10])}"
            f"{', ...' if len(cands.unique_labels) > 10 else ''}); rename the classes or pass --labels / --prompts-file"
        )
    return cands


def _model_accepts(clf: DiffusionClassifier, names: list[str]) -> list[str] | None:
    """The dataset's class names if the class-conditional model resolves them all (aliases, ids), else None."""
    try:
        clf.conditions(tuple(names))
    except ValueError:  # UserInputError included: the model does not know some name
        return None
    return names


def make_config(model: str, job: EvalJob, **extra: Any) -> RunConfig:
    """The RunConfig of a job (extra: limit, subset, image_size, dtype, exif_orientation, model_info)."""
    return RunConfig(
        model=model,
        dataset=job.dataset.name,
        split=job.dataset.split,
        schedule=schedule_dict(job.schedule),
        loss=job.loss,
        seed=job.seed,
        candidates={"labels": list(job.candidates.labels), "conditions": list(job.candidates.conditions)},
        images=len(job.indices),
        noise_file=job.noise_file,
        options=dict(job.options),
        versions=package_versions(),
        save_errors=job.save_errors,
        **extra,
    )


def compact(v: float) -> float:
    """A float at float32 precision, written short (per-trial errors are stored by the thousand)."""
    return float(f"{v:.7g}")


def make_record(index: int, label: str, result: ClassificationResult, rank: int, save_errors: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "index": index,
        "label": label,
        "status": "ok",
        "prediction": result.prediction,
        "mean_errors": {s["label"]: -s["score"] for s in result.scores},  # best first
        "calls": result.calls,
        "seconds": round(result.seconds, 4),
        "rank": rank,
    }
    if all("probability" in s for s in result.scores):
        rec["probabilities"] = {s["label"]: s["probability"] for s in result.scores}
    if result.extra:
        rec["extra"] = result.extra
    if save_errors:
        rec["errors"] = {
            key: {"t": e["timesteps"], "e": [compact(v) for v in e["values"]]} for key, e in result.errors.items()
        }
    return rec


def failed_record(index: int, label: str, exc: BaseException, rank: int) -> dict[str, Any]:
    return {
        "index": index,
        "label": label,
        "status": "failed",
        "error": f"{exc.__class__.__name__}: {exc}",
        "rank": rank,
    }


def run_eval(
    clf: DiffusionClassifier,
    job: EvalJob,
    store: RunStore,
    shard: Shard | None = None,
    progress: bool = False,
) -> int:
    """Classify this process's unfinished images of the job, appending one record each; returns how many.

    The store's config must already be claimed. A bad image becomes a "failed" record and the run goes on.
    """
    shard = shard or Shard()
    done = store.records()
    mine = shard.take(job.indices)
    todo = [i for i in mine if i not in done]
    desc = "images" if shard.world_size == 1 else f"images (rank {shard.rank})"
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="img", disable=not progress,
               file=sys.stderr)  # fmt: skip
    with bar, store.writer(shard.rank) as writer:
        for i in todo:
            writer.append(classify_one(clf, job, i, shard.rank))
            bar.update()
    return len(todo)


def classify_one(clf: DiffusionClassifier, job: EvalJob, i: int, rank: int) -> dict[str, Any]:
    """The record of dataset image i: decode it, classify it exactly as the classify API does."""
    label = job.dataset.labels[i]
    try:
        image = job.dataset.image(i)
    except Exception as exc:  # any decode failure is this image's problem, not the run's
        log.warning("image %d failed to decode: %s", i, exc)
        return failed_record(i, label, exc, rank)
    try:
        result = clf(
            image,
            prompts=job.candidates,
            schedule=job.schedule,
            loss=job.loss,
            seed=job.seed,
            noise=job.noise_file,
            batch_size=job.batch_size,
            **job.options,
        )
    except UserInputError as exc:  # e.g. an image the adapter cannot encode
        log.warning("image %d failed: %s", i, exc)
        return failed_record(i, label, exc, rank)
    return make_record(i, label, result, rank, job.save_errors)

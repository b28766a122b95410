"""The run engine: configuration, claiming and locking, crash-safe records, resume and retry, sharding, failures.

eval, demo, winoground and calibrate all run through execute(): it locks the run directory for this
process, prepares the Work (loads the model: after the lock, so a busy directory costs no load), claims
the directory (rank 0 first), turns every unfinished unit of this shard (a dataset image, a Winoground
example) into a record and waits for the other shards. Without a directory the same loop keeps the
records in memory.

A run directory holds config.json (a RunConfig, or another StoredConfig kind: WinogroundConfig) and
records-rankNNNNN.jsonl files: one JSON line per finished unit, appended with a single write, flushed
and fsynced. A SIGKILL can only leave a torn last line, which the reader ignores and the next writer of
that file cuts off; so a rerun of the same command resumes where the run stopped and never records a
unit twice. Each process of a sharded run (torchrun / accelerate launch) writes its own file; readers
merge them by index.

Sharding is by position in the selected index list (position % world_size == rank): disjoint and
complete. The trial noise depends only on (seed, trial index), never on the image or the process,
so a sharded run gives the records of a single-process run, image for image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # not on Windows: RunLock falls back to O_EXCL lock files
    fcntl = None

from ..config import ClassifierConfig
from ..core.estimator import Loss
from ..core.schedules import Schedule, schedule_from_dict, schedule_to_dict
from ..data.datasets import EvalDataset
from ..data.images import DEFAULT_OPTIONS, ImageOptions
from ..data.prompts import DEFAULT_TEMPLATE, Candidates, from_template, read_prompts_csv, shown
from ..errors import UserInputError
from ..files import check_out_dir, read_json_object
from ..names import DEFAULT_MAX_PIXELS
from ..pipeline import ClassificationResult, DiffusionClassifier

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DAMAGED = "the run directory is damaged: use a new --out, or delete the folder to start over"
RECORDS_GLOB = "records-rank*.jsonl"
SUBSET_FILE = "subset.npy"  # the evaluated dataset indices of a run over a selection (np.load reads it)


# --- processes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's place in a multi-process run (RANK / WORLD_SIZE / LOCAL_RANK, as torchrun sets them)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Shard:
        shard = cls(*(_env_int(name, default) for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))))
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


def _env_int(name: str, default: int) -> int:
    """An integer environment variable of the launcher (torchrun sets them; by hand they may be mistyped)."""
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise UserInputError(f"{name}={value!r} is not an integer; set it as torchrun does (e.g. {name}=0)") from None


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


class StoredConfig:
    """What a run directory's config.json holds: a frozen dataclass, JSON both ways, with an identity that a
    resumed run must match. KIND tells the run kinds apart (the JSON's "kind"; eval runs carry none)."""

    KIND: ClassVar[str] = "eval"  # also the command that writes this kind (`eval --out`), for messages
    NOT_IDENTITY: ClassVar[tuple[str, ...]] = ()
    versions: dict[str, str]  # the packages that made the records (package_versions), recorded for the reader

    def to_dict(self) -> dict[str, Any]:
        kind = {} if self.KIND == StoredConfig.KIND else {"kind": self.KIND}  # eval runs carry no kind
        return json.loads(json.dumps({**kind, **dataclasses.asdict(self)}))  # tuples -> lists, as stored

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_IDENTITY}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> StoredConfig:
        return cls(**checked_fields(cls, d, where))

    def check_resume(self, old: StoredConfig, store: RunStore) -> None:
        """Refuse to resume `old` (the directory's config) with this one beyond an identity difference."""


#: The options RunConfig.options records (ClassifierConfig fields); runs written before some of them read as the default
RUN_OPTIONS = {"weights": None, "temperature": None, "shortlist": None, "shortlist_k": 20}


@dataclass(frozen=True)
class RunConfig(StoredConfig):
    """Everything that decides a run's records; saved as config.json beside them.

    Two runs may share a directory only if their identity() is equal. The dataset is identified by
    dataset_id (a resolved path or hub id and a fingerprint), never by the name as typed. The
    selection (images, limit, subset, selection) may grow or shrink between runs of one directory: it
    is rewritten on resume, and readers count the records of the current selection. model_info,
    versions, save_errors and file_sizes are recorded for the reader and checked apart (file sizes).
    """

    model: str
    dataset: str
    split: str
    schedule: dict[str, Any]
    loss: str
    seed: int
    candidates: dict[str, list]  # {"labels": [...], "conditions": [...], "class_ids": [...]}
    images: int  # how many images the run covers now (after --limit / --subset / --per-class)
    limit: int | None = None
    subset: tuple[int, ...] | None = None
    per_class: int | None = None
    subset_seed: int | None = None  # the seed of --limit's shuffle and --per-class's picks
    noise_file: str | None = None
    image_size: int | None = None
    dtype: str | None = None
    exif_orientation: bool = False  # images turned by their EXIF Orientation tag (data/images.py)
    options: dict[str, Any] = field(default_factory=dict)  # RUN_OPTIONS: weighting, temperature, shortlist
    model_info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    save_errors: bool = False
    dataset_id: dict[str, Any] = field(default_factory=dict)  # EvalDataset.identity
    selection: tuple[int, ...] | None = None  # the dataset indices covered now; None: all of them
    file_sizes: tuple[int, ...] | None = None  # bytes of each image file of a folder dataset
    batch_size: int | None = 32  # rows per model call (changes no error: not part of the identity)
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS  # the decompression-bomb cap the images were opened with

    NOT_IDENTITY = ("model_info", "versions", "save_errors", "dataset", "images", "limit", "subset", "selection",
                    "per_class", "subset_seed", "file_sizes", "batch_size", "max_image_pixels")  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> RunConfig:
        d = checked_fields(cls, d, where)
        d["options"] = {**RUN_OPTIONS, **d.get("options", {})}
        cands = d.get("candidates", {})
        if not all(isinstance(cands.get(k), list) for k in ("labels", "conditions")):
            raise UserInputError(f"{where}: candidates must hold the lists labels and conditions; {DAMAGED}")
        for key in ("subset", "selection", "file_sizes"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        if "class_ids" not in cands:
            # runs written before class indices: the ids their labels imply, so they still resume
            d["candidates"] = candidates_dict(Candidates(tuple(cands["labels"]), tuple(cands["conditions"])))
        return cls(**d)

    def candidates_obj(self) -> Candidates:
        c = self.candidates
        return Candidates(tuple(c["labels"]), tuple(c["conditions"]), tuple(c["class_ids"]))

    def classifier_config(self) -> ClassifierConfig:
        """The classifier settings that made this run's records (a rerun with them gives the same records)."""
        schedule, _ = schedule_from_dict(self.schedule, f"{CONFIG_FILE}: schedule")
        return ClassifierConfig(
            schedule=schedule,
            loss=self.loss,
            seed=self.seed,
            noise_file=self.noise_file,
            batch_size=self.batch_size,
            image_options=ImageOptions(self.max_image_pixels, self.exif_orientation),
            **{**RUN_OPTIONS, **self.options},
        )

    def check_resume(self, old: StoredConfig, store: RunStore) -> None:
        """The same dataset (by its identity, never its spelled name); no finished image changed since."""
        assert isinstance(old, RunConfig)
        if old.dataset_id != self.dataset_id:
            raise UserInputError(
                f"{store.dir} holds a run on another dataset: it recorded {describe_dataset(old.dataset_id)}, this "
                f"command reads {describe_dataset(self.dataset_id)}; use a new --out, or point at the same data"
            )
        store.check_changed_files(old, self)


def candidates_dict(cands: Candidates) -> dict[str, list]:
    """Candidates as stored in config.json."""
    return {"labels": list(cands.labels), "conditions": list(cands.conditions), "class_ids": list(cands.class_ids)}


def checked_fields(cls: type, d: dict[str, Any], where: str) -> dict[str, Any]:
    """A stored config's known fields, each of its declared JSON type (a damaged file is one clear line)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {k: v for k, v in d.items() if k in fields}
    for name, value in out.items():
        if not _json_type_ok(value, hints[name]):
            raise UserInputError(f"{where}: {name} has the wrong type ({value!r:.40}); {DAMAGED}")
    no_default = dataclasses.MISSING
    missing = [n for n, f in fields.items() if n not in out and f.default is f.default_factory is no_default]
    if missing:
        raise UserInputError(f"{where} lacks {', '.join(missing)}; {DAMAGED}")
    return out


def _json_type_ok(value: Any, hint: Any) -> bool:
    """Whether a value parsed from JSON fits a type hint (dict / list / tuple / str / int / float / bool / unions)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_json_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change a run's numbers."""
    out = {"python": sys.version.split()[0]}
    for name in ("diffusion-classifier", "torch", "diffusers", "transformers", "datasets", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):  # optional packages may be absent
            out[name] = metadata.version(name)
    return out


# --- the record store --------------------------------------------------------------------------------


class RunStore:
    """A run directory: its config, its locks and its records (merged over all rank files, torn lines ignored)."""

    def __init__(self, run_dir: str | Path, kind: type[StoredConfig] = RunConfig):
        if not str(run_dir).strip():  # Path("") is ".": an empty --out would fill the working directory
            raise UserInputError("a run directory path is empty: give a folder name")
        self.dir = Path(run_dir).expanduser()
        self.kind = kind  # the config class this store reads and writes

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG_FILE

    def read_config(self) -> Any:
        """The directory's config (of this store's kind), or None when there is none yet."""
        if not self.config_path.exists():
            return None
        data = read_json_object(self.config_path, DAMAGED)
        kind = data.get("kind", RunConfig.KIND)
        if kind != self.kind.KIND:
            raise UserInputError(
                f"{self.dir} holds a run of `{kind} --out`, not of `{self.kind.KIND}`; use another --out"
            )
        return self.kind.from_dict(data, str(self.config_path))

    def require_config(self) -> Any:
        config = self.read_config()
        if config is None:
            raise UserInputError(
                f"{self.dir} is not a run directory (no {CONFIG_FILE}); create one with `{self.kind.KIND} --out`"
            )
        return config

    def check(self) -> None:
        """Before any work: --out can be written, and a run already there has a readable configuration."""
        check_out_dir(self.dir)
        self.read_config()

    def lock(self, shard: Shard | None = None) -> RunLock:
        """This process's lock on the directory (one per rank): hold it while writing records."""
        return RunLock(self.dir, shard or Shard())

    def claim(self, config: StoredConfig) -> None:
        """Write config.json for a new run, or check that an existing run has the same configuration.

        A resumed run may cover another selection of the same dataset, and image files that changed
        size but hold no finished record (e.g. a broken image the user fixed): config.json is then
        rewritten to describe the run as it is now.
        """
        old = self.read_config()
        if old is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.config_path, json.dumps(config.to_dict(), indent=2) + "\n")
            return
        config.check_resume(old, self)
        a, b = old.identity(), config.identity()
        diff = [k for k in a if a[k] != b.get(k)]
        if diff:
            raise UserInputError(
                f"{self.dir} holds a run with another configuration ({', '.join(diff)} differ); "
                "use a new --out directory, or rerun with the same settings to resume"
            )
        if old.versions != config.versions:
            log.warning("resuming %s with other package versions: %s -> %s", self.dir, old.versions, config.versions)
        if old.to_dict() != config.to_dict():
            write_atomic(self.config_path, json.dumps(config.to_dict(), indent=2) + "\n")

    def check_changed_files(self, old: RunConfig, new: RunConfig) -> None:
        """Refuse when an image with a finished (ok) record has changed size since the run recorded it."""
        if old.file_sizes is None or new.file_sizes is None or old.file_sizes == new.file_sizes:
            return
        changed = {i for i, (x, y) in enumerate(zip(old.file_sizes, new.file_sizes)) if x != y}
        finished = sorted(i for i, r in self.records().items() if i in changed and r.get("status") == "ok")
        if finished:
            raise UserInputError(
                f"{len(finished)} image(s) of {self.dir}'s dataset changed since they were classified (dataset "
                f"index {finished[0]}, ...); use a new --out to classify the changed dataset"
            )
        log.info("%d changed image file(s) without a finished record will be classified", len(changed))

    def clear(self) -> None:
        """Delete this run's config and records (only the files a run writes)."""
        for path in [self.config_path, *self.record_files()]:
            path.unlink(missing_ok=True)

    def record_files(self) -> list[Path]:
        return sorted(self.dir.glob(RECORDS_GLOB))

    def records(self) -> dict[int, dict[str, Any]]:
        """Each image's current record by dataset index, over every rank file (torn lines skipped).

        The first ok record wins over any other (a failed image is retried on resume, and its new record
        replaces the failed one); until an ok record is read, the last one read counts.
        """
        out: dict[int, dict[str, Any]] = {}
        for path in self.record_files():
            for rec in read_records(path):
                i = int(rec["index"])
                if out.get(i, {}).get("status") != "ok":
                    out[i] = rec
        return dict(sorted(out.items()))

    def finished(self) -> set[int]:
        """The indices with an ok record: what a resumed run skips."""
        return {i for i, r in self.records().items() if r.get("status") == "ok"}

    def selected_records(self) -> dict[int, dict[str, Any]]:
        """The current records of the images the run covers now (its config's selection)."""
        records, selection = self.records(), self.require_config().selection
        return records if selection is None else {i: records[i] for i in sorted(selection) if i in records}

    def writer(self, rank: int) -> RecordWriter:
        return RecordWriter(self.dir / f"records-rank{rank:05d}.jsonl")


def config_kind(store: RunStore) -> str | None:
    """The kind of run a directory holds ("eval", "winoground", ...), None when it holds none (a damaged
    config.json is refused)."""
    if not store.config_path.exists():
        return None
    return read_json_object(store.config_path, DAMAGED).get("kind", RunConfig.KIND)


def describe_dataset(identity: dict[str, Any]) -> str:
    """A dataset identity in words, for messages: 'folder /abs/digits (20 images, list 3f2a...)'."""
    if not identity:
        return "an unrecorded dataset (a run directory of an older version)"
    where = identity.get("path") or identity.get("source") or identity.get("name")
    extra = [f"{identity.get('images')} images"]
    extra += [f"{k} {identity[k]}" for k in ("split", "names", "fingerprint") if identity.get(k)]
    return f"{identity.get('kind', '?')} {where} ({', '.join(extra)})"


# --- locks -------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive lock on one rank's share of a run directory: the file lock-rankNNNNN, flock()ed.

    The kernel drops a flock when its process dies, so a lock left by a killed run is free and is
    taken over (logged). The file holds the holder (pid, host, since, world size) for messages; a
    run of another world size that is alive in the same directory is refused too (it would redo
    this shard's images). Without flock (some platforms) the file is created with O_EXCL instead and a
    holder that is gone from this host is taken over.
    """

    def __init__(self, run_dir: Path, shard: Shard):
        self.dir, self.shard = run_dir, shard
        self.path = run_dir / f"lock-rank{shard.rank:05d}"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd = self._acquire()
        try:
            self._check_other_ranks()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _acquire(self) -> int:
        if fcntl is None:
            return self._acquire_exclusive()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserInputError(self._busy(read_holder(self.path))) from None
        previous = read_holder(self.path)
        if previous:
            log.warning("taking over the stale lock %s of pid %s on %s: that process is gone", self.path,
                        previous.get("pid"), previous.get("host"))  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder()).encode(), 0)
        os.fsync(fd)
        return fd

    def _acquire_exclusive(self) -> int:
        """The fallback: create the file or fail; a holder that is gone from this host is taken over."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder_alive(holder):
                    raise UserInputError(self._busy(holder)) from None
                log.warning("taking over the stale lock %s of pid %s on %s: that process is gone", self.path,
                            holder.get("pid"), holder.get("host"))  # fmt: skip
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, json.dumps(self.holder()).encode())
            os.fsync(fd)
            return fd
        raise UserInputError(f"cannot lock {self.path}: another process keeps taking it; retry")

    def _check_other_ranks(self) -> None:
        """Refuse while a live process of another world size holds a lock here (its shards overlap ours)."""
        for path in sorted(self.dir.glob("lock-rank*")):
            holder = read_holder(path)
            if path == self.path or not holder or holder.get("world_size") == self.shard.world_size:
                continue
            if lock_held(path):
                raise UserInputError(self._busy(holder))

    def _busy(self, holder: dict[str, Any]) -> str:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
        return (f"{self.dir} is in use by another run ({who}); wait for it to finish or stop it, "
                "or use another --out")  # fmt: skip

    def holder(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "rank": self.shard.rank,
            "world_size": self.shard.world_size,
        }

    def release(self) -> None:
        """Clear the holder (a clean exit leaves no stale-lock message) and unlock."""
        if self._fd is None:
            return
        if fcntl is None:
            os.close(self._fd)
            self.path.unlink(missing_ok=True)
        else:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None


def read_holder(path: Path) -> dict[str, Any]:
    """The holder a lock file names ({} for an empty, missing or unreadable file)."""
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether a lock's holder may still run: True unless it is a pid of this host that no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return bool(holder)
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def lock_held(path: Path) -> bool:
    """Whether another process holds the lock file now (a brief non-blocking try)."""
    if fcntl is None:
        return holder_alive(read_holder(path))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


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


# --- the engine --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """A run for the engine: its configuration, the units it covers, and how units become records.

    records(todo, rank) yields the record of each unit in todo as it finishes (any order): a dict with the
    unit's "index" and a "status" ("ok", or "failed" with an "error"). A failed unit is tried again on resume.
    """

    config: StoredConfig | None  # None: a run without a directory
    indices: tuple[int, ...]  # the units the run covers now (dataset images, Winoground examples)
    records: Callable[[Sequence[int], int], Iterator[dict[str, Any]]]
    unit: str = "images"  # what the progress bar counts
    after_claim: Callable[[RunStore], None] | None = None  # rank 0, once the directory is claimed (subset.npy)


def execute(
    prepare: Callable[[], Work],
    store: RunStore | None = None,
    shard: Shard | None = None,
    progress: bool = False,
    fresh: bool = False,
) -> dict[int, dict[str, Any]]:
    """Run this process's share of the work; the records of every unit the run covers, by index.

    With a store: check it, join the launcher's process group, lock this rank's share, prepare the work
    (the model loads here: after the lock), claim the directory (rank 0 first), record each unfinished unit
    and wait for every shard, so the records returned are the whole run's. fresh: delete the directory's
    config and records first. Without a store: one process, the records in memory.
    """
    shard = shard or Shard()
    if store is None:
        if shard.world_size > 1:
            raise UserInputError("a run over several processes needs --out: each process writes its records there")
        work = prepare()
        return {rec["index"]: rec for rec in _records(work, {}, shard, progress, None)}
    store.check()  # before any work: --out writable, an earlier run readable
    grouped = start_group(shard)
    try:
        with store.lock(shard):
            if fresh:
                store.clear()
            work = prepare()
            claim_in_turn(shard, grouped, lambda: store.claim(work.config))
            if shard.rank == 0 and work.after_claim is not None:
                work.after_claim(store)
            process(work, store, shard, progress)
            barrier(grouped)  # every shard's records are on disk before any rank reads them
    finally:
        end_group(grouped)
    records = store.records()
    return {i: records[i] for i in work.indices if i in records}


def process(work: Work, store: RunStore, shard: Shard | None = None, progress: bool = False) -> int:
    """Record this shard's units of the work that have no ok record in the store; how many were tried.

    The store's config must already be claimed and this process must hold its lock. Each record is
    appended (crash-safe) as soon as it is done, so a rerun resumes; failed units are tried again.
    """
    shard = shard or Shard()
    with store.writer(shard.rank) as writer:
        return sum(1 for _ in _records(work, store.records(), shard, progress, writer))


def _records(
    work: Work, records: dict[int, dict[str, Any]], shard: Shard, progress: bool, writer: RecordWriter | None
) -> Iterator[dict[str, Any]]:
    """The records of this shard's units without an ok record, each appended to writer as it comes."""
    mine = shard.take(work.indices)
    todo = [i for i in mine if records.get(i, {}).get("status") != "ok"]
    desc = work.unit if shard.world_size == 1 else f"{work.unit} (rank {shard.rank})"
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, disable=not progress, file=sys.stderr)
    with bar:
        for record in work.records(todo, shard.rank):
            if writer is not None:
                writer.append(record)
            bar.update()
            yield record


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
    image_options: ImageOptions = DEFAULT_OPTIONS  # how the dataset's image files open (recorded)

    @classmethod
    def of(
        cls,
        dataset: EvalDataset,
        indices: tuple[int, ...],
        candidates: Candidates,
        config: ClassifierConfig,
        save_errors: bool = False,
    ) -> EvalJob:
        """The job of a resolved ClassifierConfig (ClassifierConfig.resolved)."""
        kw = config.call_kwargs()
        return cls(
            dataset,
            indices,
            candidates,
            kw["schedule"],
            kw["loss"],
            config.seed,
            config.noise_file,
            config.batch_size,
            save_errors,
            {k: kw[k] for k in RUN_OPTIONS},
            config.image_options,
        )

    @property
    def config(self) -> ClassifierConfig:
        """The job's classifier settings as data."""
        return ClassifierConfig(
            schedule=self.schedule,
            loss=self.loss,
            seed=self.seed,
            noise_file=self.noise_file,
            batch_size=self.batch_size,
            image_options=self.image_options,
            **{**RUN_OPTIONS, **self.options},
        )


def eval_candidates(
    clf: DiffusionClassifier,
    dataset: EvalDataset,
    indices: tuple[int, ...],
    labels: list[str] | None = None,
    template: str | None = None,
    prompts: Candidates | None = None,
) -> Candidates:
    """The candidates for a dataset, their class ids in the dataset's class indices: given ones, else the
    published prompts (text models), the dataset's class names (text) or the model's classes (class models).
    Every class of the selected images must be a candidate."""
    text = clf.model.conditioning == "text"
    if text and prompts is None and labels is None and template is None and dataset.prompts is not None:
        prompts = read_prompts_csv(dataset.prompts)
    if text and labels is None and prompts is None:
        prompts = from_template(dataset.class_names, template or DEFAULT_TEMPLATE, range(len(dataset.class_names)))
    if not text and labels is None and not set(dataset.class_names) <= set(clf.model.class_names or []):
        labels = _model_accepts(clf, dataset.class_names)  # e.g. "tench" for DiT's "tench, Tinca tinca"
        if labels is None and template is None and len(clf.model.class_names or []) == len(dataset.class_names):
            # the paper's datasets number their classes as the class models trained on them (ImageNet, DiT)
            return _by_index(dataset.class_names)
    cands = dataset_class_ids(clf.candidates(labels, template, prompts), dataset.class_names)
    missing = sorted({dataset.label_ids[i] for i in indices} - set(cands.class_ids))
    if missing:
        shown_ = ", ".join(f"{k}:{shown(dataset.class_names[k])}" for k in missing[:5])
        names = list(cands.class_names.values())
        raise UserInputError(
            f"dataset class(es) {shown_} are not among the candidate classes ({', '.join(names[:10])}"
            f"{', ...' if len(names) > 10 else ''}); rename the classes or pass --labels / --prompts-file"
        )
    return cands


def dataset_class_ids(cands: Candidates, class_names: list[str]) -> Candidates:
    """The candidates with the dataset's class indices: kept when each id already names the dataset's class
    of that name (published prompts), else matched by name (a class not in the dataset gets an id after them)."""
    if all(k < len(class_names) and class_names[k] == name for k, name in cands.class_names.items()):
        return cands
    names = list(cands.class_names.values())
    if len(set(class_names)) < len(class_names) or len(set(names)) < len(names):
        raise UserInputError(
            "the candidate classes do not match the dataset's class indices and its class names repeat: "
            "give a prompts CSV whose classidx column follows the dataset's classes"
        )
    index = {name: k for k, name in enumerate(class_names)}
    for name in names:
        index.setdefault(name, len(index))  # a class the dataset lacks: an id after the dataset's
    return Candidates(cands.labels, cands.conditions, tuple(index[name] for name in cands.labels))


def _by_index(class_names: list[str]) -> Candidates:
    """A class model's classes by id (the conditions "0", "1", ...), named as the dataset names them."""
    n = len(class_names)
    return Candidates(tuple(class_names), tuple(str(k) for k in range(n)), tuple(range(n)))


def _model_accepts(clf: DiffusionClassifier, names: list[str]) -> list[str] | None:
    """The dataset's class names if the class-conditional model resolves them all (aliases, ids) to distinct
    classes, else None."""
    try:
        rows = clf.conditions(tuple(names))
    except ValueError:  # UserInputError included: the model does not know some name
        return None
    distinct = len({tuple(r.flatten().tolist()) for r in rows}) == len(names)
    return names if distinct else None


def make_config(model: str, job: EvalJob, **extra: Any) -> RunConfig:
    """The RunConfig of a job (extra: limit, subset, per_class, subset_seed, image_size, dtype, model_info)."""
    everything = job.indices == tuple(range(len(job.dataset)))
    config = job.config
    return RunConfig(
        model=model,
        dataset=job.dataset.name,
        split=job.dataset.split,
        schedule=schedule_to_dict(config.schedule),
        loss=config.loss,
        seed=config.seed,
        candidates=candidates_dict(job.candidates),
        images=len(job.indices),
        noise_file=config.noise_file,
        exif_orientation=config.image_options.exif_orientation,
        options={k: getattr(config, k) for k in RUN_OPTIONS},
        batch_size=config.batch_size,
        max_image_pixels=config.image_options.max_pixels,
        versions=package_versions(),
        save_errors=job.save_errors,
        dataset_id=job.dataset.identity,
        selection=None if everything else job.indices,
        file_sizes=job.dataset.file_sizes,
        **extra,
    )


def compact(v: float) -> float:
    """A float at float32 precision, written short (per-trial errors are stored by the thousand)."""
    return float(f"{v:.7g}")


def make_record(
    index: int, label: str, label_index: int, result: ClassificationResult, rank: int, save_errors: bool
) -> dict[str, Any]:
    """One finished image. Classes are keyed by index (two may share a name): label_index is the true
    class, prediction_index the predicted one, and ranking lists every class best first as
    {"class_index", "label", "mean_error", "probability"} (mean_error: of the class's best candidate)."""
    rec: dict[str, Any] = {
        "index": index,
        "label": label,
        "label_index": label_index,
        "status": "ok",
        "prediction": result.prediction,
        "prediction_index": result.prediction_index,
        "ranking": [
            {"class_index": s["class_index"], "label": s["label"], "mean_error": -s["score"]}
            | ({"probability": s["probability"]} if "probability" in s else {})
            for s in result.scores
        ],
        "calls": result.calls,
        "seconds": round(result.seconds, 4),
        "rank": rank,
    }
    if result.extra:
        rec["extra"] = result.extra
    if save_errors:
        rec["errors"] = {
            key: {"t": e["timesteps"], "e": [compact(v) for v in e["values"]]} for key, e in result.errors.items()
        }
    return rec


def failed_record(index: int, label: str, label_index: int, exc: BaseException, rank: int) -> dict[str, Any]:
    return {
        "index": index,
        "label": label,
        "label_index": label_index,
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

    The store's config must already be claimed and this process must hold its lock. A bad image becomes
    a "failed" record and the run goes on; a resumed run tries its failed images again.
    """
    return process(eval_work(clf, job), store, shard, progress)


def eval_work(clf: DiffusionClassifier, job: EvalJob, config: RunConfig | None = None, **hooks: Any) -> Work:
    """The engine's Work of an evaluation job: a record per dataset image, through classify_stream."""
    return Work(config, job.indices, lambda todo, rank: classify_stream(clf, job, todo, rank), **hooks)


def classify_stream(
    clf: DiffusionClassifier, job: EvalJob, indices: Sequence[int], rank: int
) -> Iterator[dict[str, Any]]:
    """The record of each dataset image in indices, yielded as each image finishes (the order may differ).

    The images fly together: their rows share full model calls (core/packer.py), each decoded when its turn
    comes, with the errors of classifying it alone. An image that fails to decode or encode gets a failed
    record; the others go on.
    """
    indices = list(indices)
    images = [functools.partial(job.dataset.image, i) for i in indices]
    outcomes = clf.classify_stream(
        images,
        prompts=job.candidates,
        schedule=job.schedule,
        loss=job.loss,
        seed=job.seed,
        noise=job.noise_file,
        batch_size=job.batch_size,
        **job.options,
    )
    for position, outcome in outcomes:
        i = indices[position]
        label_index = job.dataset.label_ids[i]
        label = job.dataset.class_names[label_index]
        if isinstance(outcome, BaseException):
            log.warning("image %d failed: %s", i, outcome)
            yield failed_record(i, label, label_index, outcome, rank)
        else:
            yield make_record(i, label, label_index, outcome, rank, job.save_errors)

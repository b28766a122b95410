"""The classifier's settings as data (ClassifierConfig), and the one place each default resolves.

A ClassifierConfig holds everything beyond the model and the candidates that decides a result: the
schedule and loss, the trial noise, the timestep weights, the temperature, the batch size, the CLIP
shortlist and how image files open. It is JSON both ways (to_dict / from_dict; schedules through the
one codec, schedules.schedule_to_dict), so a run's config.json rebuilds the settings that made it.

Defaults resolve here and nowhere else: the schedule of default_schedule (the model's own protocol,
then the dataset's published one, then schedules.DEFAULT_SCHEDULE), the loss of the schedule, racing
overrides of resolve_schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from .core.calibration import check_temperature
from .core.estimator import Loss
from .core.schedules import (
    DEFAULT_SCHEDULE,
    PUBLISHED,
    Full,
    Racing,
    Schedule,
    check_timesteps,
    get_schedule,
    schedule_from_dict,
    schedule_to_dict,
)
from .data.images import DEFAULT_OPTIONS, ImageOptions
from .errors import UserInputError

if TYPE_CHECKING:
    from .models.base import DiffusionAdapter


def default_schedule(model: DiffusionAdapter, dataset: str | None = None) -> tuple[Schedule, Loss]:
    """The schedule and loss that run when none is named: the model's own protocol (DiT's published one, a
    bundled model's tuned race), else the dataset's published schedule (data/registry.py), else DEFAULT_SCHEDULE."""
    return model.default_schedule or PUBLISHED.get(dataset or "") or DEFAULT_SCHEDULE


def resolve_schedule(
    schedule: str | Schedule | None,
    loss: Loss | None,
    default: tuple[Schedule, Loss],
    racing: Mapping[str, Any] | None = None,
) -> tuple[Schedule, Loss]:
    """A schedule object and its loss from a name, an object or None (the default, of default_schedule);
    loss overrides the schedule's.

    racing: Racing fields to override (the CLI's --alpha, --max-trials, ...). They apply to the racing
    schedule that would run (the named or default one; the named "racing" when that is not racing), and its
    other fields stay: --max-trials 500 on a model whose default races at alpha 0.01 keeps alpha 0.01.
    """
    if schedule is None:
        sched, sched_loss = default
    elif isinstance(schedule, str):
        sched, sched_loss = get_schedule(schedule)
    else:
        sched, sched_loss = schedule, "l2"
    if racing:
        if not isinstance(sched, Racing):
            if schedule is not None:
                raise UserInputError("racing options apply to --schedule racing only")
            sched, sched_loss = get_schedule("racing")
        sched = replace(sched, **racing)
    return sched, loss or sched_loss


def check_schedule(schedule: Schedule, T: int) -> None:
    """Refuse, before any image, a schedule the model cannot run (timesteps outside 0..T-1, a cap above T)."""
    if isinstance(schedule, Full):
        check_timesteps(schedule.timesteps, T)
    elif isinstance(schedule, Racing):
        schedule.trials(T)


@dataclass(frozen=True)
class ClassifierConfig:
    """How to classify, beyond the model and the candidates: DiffusionClassifier.__call__'s keywords as data."""

    schedule: str | Schedule | None = None  # a name, a schedule, or None: default_schedule's
    loss: Loss | None = None  # None: the schedule's own (the published loss of a named dataset schedule)
    racing: Mapping[str, Any] = field(default_factory=dict)  # Racing fields over the racing schedule that runs
    seed: int = 0  # trial i's noise depends only on (seed, i): the same for every image, process and label
    noise_file: str | None = None  # a [N, C, h, w] noise tensor (.pt / .npy) instead of the seed
    weights: str | None = None  # timestep weighting: 'uniform', 'exp' or a weights JSON (None: uniform)
    temperature: float | None = None  # divides the probabilities' logits (None: the model's default_temperature)
    batch_size: int | None = 32  # (candidate, trial) rows per model call; None: the model's own (fast path)
    shortlist: str | None = None  # 'clip:MODEL': classify only the labels CLIP ranks first
    shortlist_k: int = 20  # labels the shortlist keeps
    image_options: ImageOptions = DEFAULT_OPTIONS  # how image files open (pixel cap, EXIF orientation)

    def __post_init__(self) -> None:
        if self.loss is not None and self.loss not in get_args(Loss):
            raise UserInputError(f"unknown loss {self.loss!r}; choose one of {', '.join(get_args(Loss))}")
        if self.temperature is not None:
            check_temperature(self.temperature)
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or self.batch_size < 1):
            raise UserInputError(f"--batch-size must be a positive number, got {self.batch_size}")
        if self.shortlist_k < 1:
            raise UserInputError(f"--shortlist-k must be at least 1, got {self.shortlist_k}")
        unknown = sorted(set(self.racing) - {f.name for f in dataclasses.fields(Racing)})
        if unknown:
            raise UserInputError(f"racing has no setting {unknown[0]!r}")

    def resolved(self, model: DiffusionAdapter, dataset: str | None = None) -> ClassifierConfig:
        """The same settings with the schedule and loss made concrete for this model (racing overrides
        applied), checked against its timesteps: what a run records."""
        sched, loss = resolve_schedule(self.schedule, self.loss, default_schedule(model, dataset), self.racing)
        check_schedule(sched, model.num_train_timesteps)
        return replace(self, schedule=sched, loss=loss, racing={})

    def call_kwargs(self) -> dict[str, Any]:
        """The keywords of DiffusionClassifier.__call__ these settings stand for."""
        if self.racing:  # racing overrides need the model's default: resolved() applies them
            raise ValueError("resolve the config for a model first (ClassifierConfig.resolved)")
        return {
            "schedule": self.schedule,
            "loss": self.loss,
            "seed": self.seed,
            "noise": self.noise_file,
            "batch_size": self.batch_size,
            "weights": self.weights,
            "temperature": self.temperature,
            "shortlist": self.shortlist,
            "shortlist_k": self.shortlist_k,
            "image_options": self.image_options,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON: a schedule object in the schedule codec's form, a name as it is."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.schedule is not None and not isinstance(self.schedule, str):
            d["schedule"] = schedule_to_dict(self.schedule)
        d["racing"] = dict(self.racing)
        d["image_options"] = dataclasses.asdict(self.image_options)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "the classifier config") -> ClassifierConfig:
        """The config to_dict wrote (keys it lacks take their defaults; unknown keys are refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserInputError(f"{where}: unknown setting {unknown[0]!r} (settings: {', '.join(sorted(names))})")
        d = dict(d)
        if isinstance(d.get("schedule"), Mapping):
            d["schedule"] = schedule_from_dict(d["schedule"], f"{where}: schedule")[0]
        if isinstance(d.get("image_options"), Mapping):
            d["image_options"] = ImageOptions(**d["image_options"])
        if isinstance(d.get("weights"), Path):
            d["weights"] = str(d["weights"])
        return cls(**d)

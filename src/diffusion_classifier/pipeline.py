"""DiffusionClassifier: the public API that ties an adapter, candidates, a schedule and the estimator together."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data.images import load_image
from .data.prompts import DEFAULT_TEMPLATE, Candidates, from_labels, from_template
from .errors import UserInputError
from .estimator import ErrorLedger, Loss, model_error_fn
from .models.base import DiffusionAdapter
from .noise import NoiseBank, load_noise_file
from .schedules import DEFAULT_SCHEDULE, Schedule, count_calls, get_schedule


@dataclass
class ClassificationResult:
    """One image's decision; the same fields as the CLI's JSON line."""

    image: str | None
    prediction: str
    scores: list[dict[str, Any]]  # [{"label", "score"}], best first; score = -mean error
    errors: dict[str, dict[str, list]]  # key -> {"timesteps": [...], "values": [...]}, evaluation order
    calls: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def resolve_schedule(
    schedule: str | Schedule | None, loss: Loss | None, default: tuple[Schedule, Loss] = DEFAULT_SCHEDULE
) -> tuple[Schedule, Loss]:
    """A schedule object and its loss from a name, an object or None (the default); loss overrides."""
    if schedule is None:
        sched, sched_loss = default
    elif isinstance(schedule, str):
        sched, sched_loss = get_schedule(schedule)
    else:
        sched, sched_loss = schedule, "l2"
    return sched, loss or sched_loss


class DiffusionClassifier:
    """Zero-shot classification with a conditional diffusion model (Li et al., ICCV 2023).

    >>> clf = DiffusionClassifier.from_pretrained("builtin:mnist")
    >>> clf("digit.png", labels=["3", "8"]).prediction
    """

    def __init__(self, model: DiffusionAdapter):
        self.model = model
        self._cond_cache: dict[str, torch.Tensor] = {}
        self._noise: dict[Any, NoiseBank] = {}

    @classmethod
    def from_pretrained(
        cls, model: str | Path, torch_dtype: torch.dtype | str | None = None, device: str | None = None, **kwargs
    ) -> DiffusionClassifier:
        """Load a model by hub id, local folder or builtin name (see models.load_adapter)."""
        from .models import load_adapter

        return cls(load_adapter(str(model), dtype=torch_dtype, device=device, **kwargs))

    def candidates(
        self,
        labels: list[str] | None = None,
        template: str | None = None,
        prompts: Candidates | None = None,
    ) -> Candidates:
        """What the model is asked about: prompts for text models, class names for class models."""
        if prompts is not None:
            return prompts
        if self.model.conditioning == "class":
            if template is not None:
                raise UserInputError("--template applies to text-conditioned models only")
            return from_labels(labels if labels is not None else list(self.model.class_names or []))
        return from_template(labels or [], template or DEFAULT_TEMPLATE)

    def noise_bank(self, seed: int = 0, noise: str | Path | torch.Tensor | None = None) -> NoiseBank:
        """The trial noise: from a file or tensor when given, else seeded; cached per source."""
        key = ("file", str(noise)) if noise is not None and not isinstance(noise, torch.Tensor) else ("seed", seed)
        if isinstance(noise, torch.Tensor):
            return NoiseBank(self.model.latent_shape, table=noise.float())
        if key not in self._noise:
            shape = self.model.latent_shape
            table = load_noise_file(noise) if noise is not None else None
            self._noise[key] = NoiseBank(shape, seed=seed, table=table)
        return self._noise[key]

    def conditions(self, conditions: tuple[str, ...]) -> torch.Tensor:
        """Rows of model.condition for each condition, each computed once per classifier."""
        new = [c for c in dict.fromkeys(conditions) if c not in self._cond_cache]
        if new:
            for c, row in zip(new, self.model.condition(new)):
                self._cond_cache[c] = row
        return torch.stack([self._cond_cache[c] for c in conditions])

    def __call__(
        self,
        image: Any,
        labels: list[str] | None = None,
        *,
        template: str | None = None,
        prompts: Candidates | None = None,
        schedule: str | Schedule | None = None,
        loss: Loss | None = None,
        seed: int = 0,
        noise: str | Path | torch.Tensor | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> ClassificationResult:
        """Classify one image (a path, a PIL image, or what the adapter's encode takes)."""
        began = time.perf_counter()
        cands = self.candidates(labels, template, prompts)
        sched, loss = resolve_schedule(schedule, loss, getattr(self.model, "default_schedule", DEFAULT_SCHEDULE))
        name = str(image) if isinstance(image, (str, Path)) else None
        if isinstance(image, (str, Path)):
            image = load_image(image)
        x0 = self.model.encode(image)
        cond = self.conditions(cands.conditions)
        T = self.model.num_train_timesteps
        with tqdm(
            total=count_calls(sched, len(cands), T),
            desc="model calls",
            unit="call",
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar:
            error_fn = model_error_fn(
                self.model, x0, cond, self.noise_bank(seed, noise), loss, batch_size, on_batch=bar.update
            )
            ledger = ErrorLedger(error_fn, len(cands))
            sched.run(ledger, T)
        return summarize(ledger, cands, name, time.perf_counter() - began)


def summarize(ledger: ErrorLedger, cands: Candidates, image: str | None, seconds: float) -> ClassificationResult:
    """The result of a finished ledger: labels ranked by their best candidate, scores, all errors."""
    means = ledger.mean_errors().tolist()
    scores: dict[str, float] = {}
    for c in ledger.ranking():
        scores.setdefault(cands.labels[c], -means[c])
    errors = {
        key: {"timesteps": [tr.t for tr in ledger.trials[c]], "values": ledger.errors[c]}
        for c, key in enumerate(cands.keys())
    }
    return ClassificationResult(
        image=image,
        prediction=next(iter(scores)),
        scores=[{"label": k, "score": v} for k, v in scores.items()],
        errors=errors,
        calls=ledger.calls,
        seconds=seconds,
    )

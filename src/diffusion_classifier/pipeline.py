"""DiffusionClassifier: the public API that ties an adapter, candidates, a schedule and the estimator together."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from .config import default_schedule, resolve_schedule
from .core.calibration import check_temperature, elbo_scale, probabilities
from .core.estimator import ErrorLedger, Loss, call_size, model_errors
from .core.noise import NoiseBank, load_noise_file
from .core.packer import Flight, Packer
from .core.schedules import Schedule, count_calls
from .core.weighting import TimestepWeights, weight_table
from .data.images import DEFAULT_OPTIONS, ImageOptions, load_image
from .data.prompts import DEFAULT_TEMPLATE, Candidates, from_labels, from_template, shown
from .errors import UserInputError
from .models.base import DiffusionAdapter


@dataclass
class ClassificationResult:
    """One image's decision; the same fields as the CLI's JSON line."""

    image: str | None
    prediction: str  # the predicted class's name
    prediction_index: int  # ... and its index (classidx): two classes may share a name
    scores: list[dict[str, Any]]  # [{"label", "class_index", "score", "probability"}] per class, best first;
    # score = -mean error of the class's best candidate
    errors: dict[str, dict[str, list]]  # key -> {"timesteps": [...], "values": [...]}, evaluation order
    calls: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d

    def to_hf(self) -> list[dict[str, Any]]:
        """[{"score": probability, "label": ...}] best first, as transformers' zero-shot-image-classification
        pipeline returns it (one entry per class; the probabilities sum to 1)."""
        return [{"score": s["probability"], "label": s["label"]} for s in self.scores]


@dataclass(frozen=True)
class _Settings:
    """What classify_stream resolved once for all its images."""

    cands: Candidates
    schedule: Schedule
    weights: torch.Tensor | None  # w[t] (weighting.weight_table); None: the plain mean
    logit_scale: float  # of the probabilities: the ELBO scale over the temperature
    shortlist: str | None
    shortlist_k: int
    image_options: ImageOptions
    callback: Callable[[RaceEvent], None] | None


@dataclass(frozen=True)
class RaceEvent:
    """Progress after one round of model calls, for a live view of the race (the web page)."""

    remaining: dict[int, float]  # classes (by index: two may share a name) evaluated in this round -> their
    # best candidate's mean error, best first
    calls: int  # model calls so far
    max_calls: int  # the schedule's calls at most (count_calls)


def race_event(ledger: ErrorLedger, candidates: Sequence[int], cands: Candidates, max_calls: int) -> RaceEvent:
    """The RaceEvent of a ledger that has just evaluated candidates."""
    means = ledger.mean_errors(candidates).tolist()
    best: dict[int, float] = {}
    for c, m in sorted(zip(candidates, means), key=lambda cm: cm[1]):
        best.setdefault(cands.class_ids[c], m)
    return RaceEvent(remaining=best, calls=ledger.calls, max_calls=max_calls)


class DiffusionClassifier:
    """Zero-shot classification with a conditional diffusion model (Li et al., ICCV 2023).

    >>> clf = DiffusionClassifier.from_pretrained("builtin:mnist")
    >>> clf("digit.png", labels=["3", "8"]).prediction
    """

    def __init__(self, model: DiffusionAdapter):
        self.model = model
        self._cond_cache: dict[str, torch.Tensor] = {}
        self._noise: dict[Any, NoiseBank] = {}
        self._shortlists: dict[str, Any] = {}

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        torch_dtype: torch.dtype | str | None = None,
        device: str | None = None,
        fast: bool | None = None,
        **kwargs,
    ) -> DiffusionClassifier:
        """Load a model by hub id, local folder or builtin name (see models.load_adapter).

        fast: the fast inference path (models/fast.py: fp16, compiled, static shapes, fp32 redo of overflows);
        None turns it on where it is safe (CUDA) and leaves it off elsewhere.
        """
        from .models import load_adapter
        from .models.fast import apply_fast

        return cls(apply_fast(load_adapter(str(model), dtype=torch_dtype, device=device, **kwargs), fast))

    @property
    def default_schedule(self) -> tuple[Schedule, Loss]:
        """The schedule and loss that run when none is named (config.default_schedule: the model's own, else
        DEFAULT_SCHEDULE)."""
        return default_schedule(self.model)

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
            cands = from_labels(labels if labels is not None else list(self.model.class_names or []))
            self._check_distinct_classes(cands)
            return cands
        return from_template(labels or [], template or DEFAULT_TEMPLATE)

    def _check_distinct_classes(self, cands: Candidates) -> None:
        """Two labels of a class model must not name one class ("7" and "07", a name and its alias)."""
        seen: dict[tuple, str] = {}
        for label, row in zip(cands.labels, self.conditions(cands.conditions)):
            first = seen.setdefault(tuple(row.flatten().tolist()), label)
            if first != label:
                raise UserInputError(
                    f"labels {shown(first)} and {shown(label)} name the same class of this model: give each class once"
                )

    def noise_bank(
        self, seed: int = 0, noise: str | Path | torch.Tensor | None = None, antithetic: bool = False
    ) -> NoiseBank:
        """The trial noise: from a file or tensor when given, else seeded; cached per source."""
        key = ("file", str(noise)) if noise is not None and not isinstance(noise, torch.Tensor) else ("seed", seed)
        key = (*key, antithetic)
        if isinstance(noise, torch.Tensor):
            return NoiseBank(self.model.latent_shape, table=noise.float(), antithetic=antithetic)
        if key not in self._noise:
            shape = self.model.latent_shape
            table = load_noise_file(noise) if noise is not None else None
            self._noise[key] = NoiseBank(shape, seed=seed, table=table, antithetic=antithetic)
        return self._noise[key]

    def conditions(self, conditions: tuple[str, ...]) -> torch.Tensor:
        """Rows of model.condition for each condition, each computed once per classifier."""
        new = [c for c in dict.fromkeys(conditions) if c not in self._cond_cache]
        if new:
            for c, row in zip(new, self.model.condition(new)):
                self._cond_cache[c] = row
        return torch.stack([self._cond_cache[c] for c in conditions])

    def __call__(
        self, image: Any, labels: list[str] | None = None, **options: Any
    ) -> ClassificationResult | list[ClassificationResult]:
        """Classify one image (a path, a PIL image, or what the adapter's encode takes): its ClassificationResult;
        or a list (or tuple) of images: their results, in order, their rows packed into shared model calls.

        options: those of classify_stream. An image that cannot be read or encoded raises its UserInputError.
        """
        many = isinstance(image, (list, tuple))
        images = list(image) if many else [image]
        results: list[Any] = [None] * len(images)
        for position, outcome in self.classify_stream(images, labels, **options):
            if isinstance(outcome, BaseException):
                raise outcome
            results[position] = outcome
        return results if many else results[0]

    def classify_stream(
        self,
        images: Iterable[Any],
        labels: list[str] | None = None,
        *,
        template: str | None = None,
        prompts: Candidates | None = None,
        schedule: str | Schedule | None = None,
        loss: Loss | None = None,
        seed: int = 0,
        noise: str | Path | torch.Tensor | None = None,
        batch_size: int | None = 32,
        progress: bool = False,
        weights: str | Path | TimestepWeights | torch.Tensor | None = None,
        temperature: float | None = None,
        shortlist: str | None = None,
        shortlist_k: int = 20,
        image_options: ImageOptions = DEFAULT_OPTIONS,
        callback: Callable[[RaceEvent], None] | None = None,
    ) -> Iterator[tuple[int, ClassificationResult | Exception]]:
        """Classify many images: (position, result) for each, yielded as each image finishes (core/packer.py).

        The rows of every image in flight are packed into model calls of batch_size rows; an image's errors
        are those of classifying it alone. images may be lazy (a generator): each is opened when its turn
        comes, and an item may be a zero-argument function that returns the image (e.g. a dataset's decoder).
        A failure of one image is yielded as (position, the exception): an item whose function raised, or a
        UserInputError (e.g. an unreadable file); the other images go on. Bad settings raise here, at once.

        image_options: how a file is opened (pixel cap, EXIF orientation; data/images.py load_image).
        weights: timestep weighting of the mean error ('uniform', 'exp', a weights JSON file; core/weighting.py).
        temperature: divides the ELBO-scaled logits of the probabilities (default: the model's, else 1).
        shortlist: 'clip:MODEL' ranks the labels with CLIP first; only the top shortlist_k are classified.
        batch_size: rows (pairs) per model call; None lets the model choose (the fast path fills the card), else 32.
        callback: called with a RaceEvent after each round of an image (labels still in, calls so far); meant
        for one image (the web page's live race): the events of several images interleave.
        result.seconds: the image's opening and encoding plus its share (by rows) of the model calls it was in.
        """
        if temperature is not None:
            check_temperature(temperature)  # before any model work
        sched, loss = resolve_schedule(schedule, loss, self.default_schedule)
        T = self.model.num_train_timesteps
        tau = temperature if temperature is not None else self.model.default_temperature
        run = _Settings(
            cands=self.candidates(labels, template, prompts),
            schedule=sched,
            weights=weight_table(weights, T),
            logit_scale=elbo_scale(self.model.latent_shape, T) / tau,
            shortlist=shortlist,
            shortlist_k=shortlist_k,
            image_options=image_options,
            callback=callback,
        )
        bank = self.noise_bank(seed, noise, antithetic=getattr(sched, "antithetic", False))
        return self._stream(images, run, bank, loss, batch_size, progress)

    def _stream(
        self, images: Iterable[Any], run: _Settings, bank: NoiseBank, loss: Loss, batch_size: int | None, progress: bool
    ) -> Iterator[tuple[int, ClassificationResult | Exception]]:
        """The packer over the images' flights; each landed image summarized (or its failure) at once."""
        flying: dict[int, tuple[ErrorLedger, Candidates, str | None, dict[str, Any]]] = {}
        total = None
        if progress and isinstance(images, Sized):
            total = count_calls(run.schedule, len(run.cands), self.model.num_train_timesteps) * len(images)
        with tqdm(total=total, desc="model calls", unit="call", disable=not progress, file=sys.stderr,
                  leave=False) as bar:  # fmt: skip
            packer = Packer(model_errors(self.model, bank, loss, on_batch=bar.update),
                            lambda: call_size(self.model, batch_size))  # fmt: skip
            for key, error, seconds in packer.run(self._flights(images, run, flying)):
                if error is not None:
                    yield key, error
                    continue
                ledger, cands, name, extra = flying.pop(key)
                result = summarize(ledger, cands, name, seconds, logit_scale=run.logit_scale)
                result.extra.update(extra)
                yield key, result

    def _flights(self, images: Iterable[Any], run: _Settings, flying: dict) -> Iterator[tuple[int, Flight | Exception]]:
        """Each image opened in turn, encoded, and its schedule started on a ledger of its own (kept in flying)."""
        T = self.model.num_train_timesteps
        for position, item in enumerate(images):
            began = time.perf_counter()
            if callable(item):
                try:
                    item = item()
                except Exception as exc:  # whatever a decoder raises is this image's failure, not the run's
                    yield position, exc
                    continue
            try:
                image, name, cands, extra = self._open(item, run)
                x0 = self.model.encode(image).to(self.model.device, torch.float32)
            except UserInputError as exc:
                yield position, exc
                continue
            cond = self.conditions(cands.conditions)
            ledger = ErrorLedger(None, len(cands), weights=run.weights, on_evaluate=self._race_view(run, cands))
            flying[position] = (ledger, cands, name, extra)
            yield position, Flight(x0, cond, run.schedule.plan(ledger, T), time.perf_counter() - began)

    def _race_view(self, run: _Settings, cands: Candidates) -> Callable[[ErrorLedger, Sequence[int]], None] | None:
        """The ledger's on_evaluate that turns each round into a RaceEvent for run.callback (None: no callback)."""
        if run.callback is None:
            return None
        callback, max_calls = run.callback, count_calls(run.schedule, len(cands), self.model.num_train_timesteps)
        return lambda ledger, candidates: callback(race_event(ledger, candidates, cands, max_calls))

    def _open(self, item: Any, run: _Settings) -> tuple[Any, str | None, Candidates, dict[str, Any]]:
        """An image as the adapter takes it, its name (a path's), its candidates (shortlisted) and extra fields."""
        name = str(item) if isinstance(item, (str, Path)) else None
        image = load_image(item, run.image_options) if isinstance(item, (str, Path, Image.Image)) else item
        if run.shortlist is None:
            return image, name, run.cands, {}
        cands = self.shortlist(run.shortlist).select(image, run.cands, run.shortlist_k)
        return image, name, cands, {"shortlist": list(cands.class_names.values())}

    def shortlist(self, spec: str):
        """The ClipShortlist for a 'clip:MODEL' spec, loaded once per classifier."""
        from .matching.shortlist import ClipShortlist, parse_shortlist

        if spec not in self._shortlists:
            self._shortlists[spec] = ClipShortlist(parse_shortlist(spec), device=self.model.device)
        return self._shortlists[spec]


def summarize(
    ledger: ErrorLedger, cands: Candidates, image: str | None, seconds: float, logit_scale: float = 1.0
) -> ClassificationResult:
    """The result of a finished ledger: classes ranked by their best candidate, scores, all errors.

    Classes are keyed by class index (two may share a name). The order is the ledger's ranking: the
    schedule's survivors first, as torch.topk chose them. Each class's probability is
    softmax(-logit_scale * gap) over the classes' best candidates, where gap is the paired mean error
    difference to the winner on their shared trials (core/calibration.py: logit_scale = T d / 2 / temperature);
    the winner's gap is 0.
    """
    means = ledger.mean_errors().tolist()
    ranking = ledger.ranking()
    best: dict[int, int] = {}  # class index -> its best candidate, best class first
    for c in ranking:
        best.setdefault(cands.class_ids[c], c)
    gaps = [ledger.paired_gap(c, ranking[0]) for c in best.values()]
    probs = probabilities(torch.tensor(gaps, dtype=torch.float64), logit_scale).tolist()
    scores = [
        {"label": cands.labels[c], "class_index": k, "score": -means[c], "probability": p}
        for (k, c), p in zip(best.items(), probs)
    ]
    errors = {
        key: {"timesteps": [tr.t for tr in ledger.trials[c]], "values": ledger.errors[c]}
        for c, key in enumerate(cands.keys())
    }
    return ClassificationResult(
        image=image,
        prediction=scores[0]["label"],
        prediction_index=scores[0]["class_index"],
        scores=scores,
        errors=errors,
        calls=ledger.calls,
        seconds=seconds,
    )

"""evaluate(): classify a dataset into a resumable run directory, from Python; `eval` and `demo` call it.

>>> from diffusion_classifier import Selection, evaluate
>>> summary = evaluate("builtin:mnist", "builtin:mnist", "runs/mnist", selection=Selection(limit=100))
>>> summary.top1

Everything the user can get wrong (the run directory, the dataset, the selection, the settings) is checked
before the model loads; the model loads once this process holds the directory's lock (runs.execute).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ClassifierConfig
from ..data.datasets import EvalDataset, open_dataset, save_subset, select_indices
from ..data.prompts import Candidates
from ..errors import UserInputError
from .engine import SUBSET_FILE, EvalJob, RunStore, Shard, Work, eval_candidates, eval_work, execute, make_config

if TYPE_CHECKING:
    from ..pipeline import DiffusionClassifier
    from ..reporting.report import RunSummary


@dataclass(frozen=True)
class Selection:
    """Which images of a dataset a run covers (at most one of limit, per_class, subset; none: all)."""

    limit: int | None = None  # the first N of a seeded shuffle of the split
    per_class: int | None = None  # N seeded picks of every class
    subset: tuple[int, ...] | None = None  # these dataset indices
    seed: int | None = None  # the seed of limit's shuffle and per_class's picks (None: the trial noise's seed)

    def subset_seed(self, noise_seed: int) -> int | None:
        """The seed the picks were drawn with (recorded; None when nothing was drawn)."""
        if self.limit is None and self.per_class is None:
            return None
        return noise_seed if self.seed is None else self.seed

    def indices(self, dataset: EvalDataset, noise_seed: int) -> tuple[int, ...]:
        return select_indices(dataset, self.limit, self.subset, self.per_class, self.subset_seed(noise_seed) or 0)


def evaluate(
    model: str | Path | DiffusionClassifier | Callable[[], Any],
    dataset: str | EvalDataset,
    out: str | Path,
    *,
    config: ClassifierConfig | None = None,
    labels: list[str] | None = None,
    template: str | None = None,
    prompts: Candidates | None = None,
    selection: Selection | None = None,
    save_errors: bool = False,
    model_name: str | None = None,
    recorded: dict[str, Any] | None = None,
    shard: Shard | None = None,
    progress: bool = False,
    fresh: bool = False,
) -> RunSummary:
    """Classify the selected images of a dataset into the run directory out (created, or resumed); its summary.

    model: a hub id, folder or builtin name (loaded with DiffusionClassifier.from_pretrained), a classifier,
    or a function that returns one (called after the directory is locked). dataset: a name (open_dataset)
    or an EvalDataset. config: the classifier settings (None: the defaults; its schedule None runs the
    model's own protocol, else the dataset's published one). labels / template / prompts: the candidates
    (default: the dataset's published prompts, or its class names). model_name: what the run records as
    the model (default: model when it is a name). recorded: more RunConfig fields (image_size, dtype).
    shard: this process's place in a sharded run (default: RANK / WORLD_SIZE of the environment). fresh:
    delete the directory's earlier config and records first. A rerun with the same arguments resumes;
    a failed image is tried again.
    """
    from ..reporting.report import summarize_run

    store = RunStore(out)
    store.check()  # before the dataset and the model: --out writable, an earlier run readable
    config = config or ClassifierConfig()
    selection = selection or Selection()
    data = open_dataset(dataset, image_options=config.image_options) if isinstance(dataset, str) else dataset
    indices = selection.indices(data, config.seed)
    load = _loader(model)
    name = model_name or (str(model) if isinstance(model, (str, Path)) else None)

    def prepare() -> Work:
        clf = load()
        job = EvalJob.of(
            data,
            indices,
            eval_candidates(clf, data, indices, labels, template, prompts),
            config.resolved(clf.model, data.name),
            save_errors,
        )
        run_config = make_config(
            name or str(clf.model.describe().get("model", type(clf.model).__name__)),
            job,
            limit=selection.limit,
            subset=selection.subset,
            per_class=selection.per_class,
            subset_seed=selection.subset_seed(config.seed),
            model_info=clf.model.describe(),
            **(recorded or {}),
        )
        return eval_work(clf, job, run_config, after_claim=_save_subset(data, indices))

    execute(prepare, store, shard or Shard.from_env(), progress, fresh)
    return summarize_run(store)


def _loader(model: Any) -> Callable[[], Any]:
    """A function that returns the classifier of evaluate's model argument."""
    if isinstance(model, (str, Path)):
        from ..pipeline import DiffusionClassifier

        return lambda: DiffusionClassifier.from_pretrained(model)
    if hasattr(model, "model"):  # a classifier: DiffusionClassifier, or clip_baseline.ClipClassifier
        return lambda: model
    if callable(model):
        return model
    raise UserInputError(f"model must be a model name, a DiffusionClassifier or a loader, got {model!r:.40}")


def _save_subset(data: EvalDataset, indices: tuple[int, ...]) -> Callable[[RunStore], None] | None:
    """Rank 0's step after the claim: subset.npy for a run over a selection (the official --subset_path reads it)."""
    if len(indices) == len(data):
        return None
    return lambda store: save_subset(store.dir / SUBSET_FILE, indices)

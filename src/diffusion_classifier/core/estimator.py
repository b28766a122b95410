"""The Diffusion Classifier estimator: shared trials (t, eps), batched noise-prediction errors, the ledger.

Notation (SPEC.md §1): x0 the clean latent, eps ~ N(0, I) the trial noise, t a timestep index, x_t the
model's forward process at t (forward_process.py; DDPM: x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps),
and the per-trial error loss(eps, eps_theta(x_t, t, c)) averaged over latent elements (precisely: loss between
the process's target and the model's prediction). A candidate's score is minus its mean error; every candidate
sees the same (t, eps) pairs, so their differences carry little Monte-Carlo noise.

This module knows tensors and numbers only: the model is any DiffusionAdapter-like object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from typing import Literal, NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from ..errors import UserInputError
from .forward_process import q_sample  # noqa: F401  (its home before the forward processes; re-exported)

log = logging.getLogger(__name__)

Loss = Literal["l2", "l1", "huber"]
LOSSES: tuple[str, ...] = ("l2", "l1", "huber")


class Trial(NamedTuple):
    """One Monte-Carlo trial: timestep t and the index of its noise eps in the NoiseBank."""

    t: int
    noise_index: int


def per_sample_loss(eps: torch.Tensor, eps_pred: torch.Tensor, loss: Loss = "l2") -> torch.Tensor:
    """The error of each trial in a batch: the mean over latent elements of l2, l1 or huber (fp32)."""
    eps, eps_pred = eps.float(), eps_pred.float()
    if loss == "l2":
        err = F.mse_loss(eps_pred, eps, reduction="none")
    elif loss == "l1":
        err = F.l1_loss(eps_pred, eps, reduction="none")
    elif loss == "huber":
        err = F.huber_loss(eps_pred, eps, reduction="none")
    else:
        raise UserInputError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return err.flatten(1).mean(1)


class Pair(NamedTuple):
    """A (candidate, trial) pair: one row of one model call."""

    candidate: int
    trial: Trial


class Request(NamedTuple):
    """What a schedule asks for: every given candidate on every given trial (candidate-major rows, as the
    reference code packs them)."""

    candidates: tuple[int, ...]
    trials: tuple[Trial, ...]

    @property
    def pairs(self) -> list[Pair]:
        return [Pair(c, tr) for c in self.candidates for tr in self.trials]


ErrorFn = Callable[[Sequence[Pair]], torch.Tensor]
R = TypeVar("R")


def drive(steps: Generator[Request, torch.Tensor, R], error_fn: ErrorFn) -> R:
    """Run a schedule's steps to their end, answering each request with error_fn (one image, no packing)."""
    try:
        request = next(steps)
        while True:
            request = steps.send(error_fn(request.pairs))
    except StopIteration as stop:
        return stop.value


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x on device; a copy to CUDA goes through pinned memory without blocking, so the host never waits on the GPU."""
    if torch.device(device).type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


class Segment(NamedTuple):
    """The rows of one image in one model call: its latent, its candidates' condition rows, its pairs."""

    x0: torch.Tensor  # (C, h, w), float32, on the model's device
    cond: torch.Tensor  # (n_candidates, ...): rows of model.condition
    pairs: Sequence[Pair]


Call = Sequence[Segment]  # the rows of one model call, image after image
CallErrors = Callable[[Sequence[Call], int], torch.Tensor]


def call_size(model, batch_size: int | None) -> int:
    """Rows per model call: batch_size, else the model's own (the fast path's fills the card), else 32."""
    return batch_size or model.batch_size or 32


def model_errors(model, noise, loss: Loss = "l2", on_batch: Callable[[int], None] | None = None) -> CallErrors:
    """errors(calls, size): the errors of the rows of several model calls, in row order, float32 on the CPU.

    noise is a NoiseBank shared by every image. Each row's error is computed from its own (x0, t, eps, c):
    x_t = forward_process.q_sample(x0, eps, t), error = loss(target(x0, eps), predict_noise(x_t, t, c)).
    A call of fewer than model.min_call_rows rows (and size or more) is padded to that many, its last row repeated
    and dropped after, so a row's error depends neither on the batch size nor on its call's other rows.
    size: the rows a call may hold, so the padding never exceeds a call the caller chose to keep small.
    Errors stay on the model's device until every call is queued (one transfer, no host-device
    synchronisation per call); errors that are not finite (fp16 overflow) are redone with model.safe().
    """
    process = model.forward_process.to(model.device)

    def call_errors(m, call: Call, size: int) -> torch.Tensor:
        """The errors of one model call with adapter m, left on its device."""
        pairs = [p for seg in call for p in seg.pairs]
        t = to_device(torch.tensor([p.trial.t for p in pairs]), m.device)
        eps = to_device(noise[[p.trial.noise_index for p in pairs]], m.device)
        x0 = torch.cat([seg.x0.expand(len(seg.pairs), *seg.x0.shape) for seg in call])
        c = torch.cat([seg.cond[to_device(torch.tensor([p.candidate for p in seg.pairs]), seg.cond.device)]
                       for seg in call])  # fmt: skip
        x_t = process.q_sample(x0, eps, t).to(m.dtype)
        n, rows = len(pairs), min(size, max(len(pairs), m.min_call_rows))
        if n < rows:
            x_t, t, c = (torch.cat([v, v[-1:].expand(rows - n, *v.shape[1:])]) for v in (x_t, t, c))
        return per_sample_loss(process.target(x0, eps), m.predict_noise(x_t, t, c)[:n], loss)

    def run(m, calls: Sequence[Call], size: int, progress: Callable[[int], None] | None) -> torch.Tensor:
        parts = []
        for call in calls:
            parts.append(call_errors(m, call, size))
            if progress is not None:
                progress(len(parts[-1]))
        return torch.cat(parts).cpu() if parts else torch.empty(0)

    @torch.inference_mode()
    def errors(calls: Sequence[Call], size: int) -> torch.Tensor:
        out = run(model, calls, size, on_batch)
        bad = (~torch.isfinite(out)).nonzero().flatten().tolist()
        safe = model.safe() if bad else None
        if safe is not None:  # overflow in half precision: those rows again in float32, eager
            log.warning("%d of %d errors were not finite; redoing them in %s", len(bad), len(out), safe.dtype)
            rows = [Segment(seg.x0, seg.cond, [p]) for call in calls for seg in call for p in seg.pairs]
            redo = [[rows[i] for i in bad[k : k + size]] for k in range(0, len(bad), size)]
            out[bad] = run(safe, redo, size, None)
        return out

    return errors


def model_error_fn(
    model,
    x0: torch.Tensor,
    cond: torch.Tensor,
    noise,
    loss: Loss = "l2",
    batch_size: int | None = 32,
    on_batch: Callable[[int], None] | None = None,
) -> ErrorFn:
    """An ErrorFn over one image's latent x0: its pairs in calls of batch_size rows, in order (model_errors).

    cond holds the conditions' rows (model.condition), noise is a NoiseBank; batch_size None: call_size.
    """
    size = call_size(model, batch_size)
    errors = model_errors(model, noise, loss, on_batch)
    x0 = x0.to(model.device, torch.float32)

    def error_fn(pairs: Sequence[Pair]) -> torch.Tensor:
        return errors([[Segment(x0, cond, pairs[k : k + size])] for k in range(0, len(pairs), size)], size)

    return error_fn


class ErrorLedger:
    """Every trial evaluated for every candidate, in evaluation order, and the model calls spent.

    Schedules talk only to this object: ask(candidates, trials) requests the same trials for each given
    candidate (candidate-major, as the reference code packs them) and records the errors sent back;
    evaluate() answers such a request at once with error_fn (None when a packer answers instead).
    """

    def __init__(
        self,
        error_fn: ErrorFn | None,
        n_candidates: int,
        weights: torch.Tensor | None = None,
        on_evaluate: Callable[[ErrorLedger, Sequence[int]], None] | None = None,
    ):
        self.error_fn = error_fn
        self.n_candidates = n_candidates
        self.weights = weights  # w[t] of the aggregate (weighting.weight_table); None = the plain mean
        self.on_evaluate = on_evaluate  # called with (ledger, candidates) after each recorded evaluate: progress
        self.trials: list[list[Trial]] = [[] for _ in range(n_candidates)]
        self.errors: list[list[float]] = [[] for _ in range(n_candidates)]
        self.calls = 0
        self.kept: list[int] = []  # the schedule's last keep(): its survivors, best first

    def evaluate(self, candidates: Sequence[int], trials: Sequence[Trial]) -> torch.Tensor:
        """Errors of shape (len(candidates), len(trials)) from the ledger's error_fn, recorded in the ledger."""
        return drive(self.ask(candidates, trials), self.error_fn)

    def ask(self, candidates: Sequence[int], trials: Sequence[Trial]) -> Generator[Request, torch.Tensor, torch.Tensor]:
        """A schedule's step: yield the Request for candidates x trials, record the errors it is sent back.

        Schedules `yield from ledger.ask(...)`: whoever drives them (drive, or the packer for many images)
        answers. Nothing is asked for an empty request. Returns the errors, (len(candidates), len(trials)).
        """
        request = Request(tuple(candidates), tuple(trials))
        if not request.candidates or not request.trials:
            return torch.empty(len(request.candidates), len(request.trials))
        errors = yield request
        return self.record(request, errors)

    def record(self, request: Request, errors: torch.Tensor) -> torch.Tensor:
        """Record the errors of a request's pairs (in Request.pairs order) and count its model calls."""
        errs = errors.view(len(request.candidates), len(request.trials))
        self.calls += errs.numel()
        for row, c in zip(errs.tolist(), request.candidates):
            self.trials[c].extend(request.trials)
            self.errors[c].extend(row)
        if self.on_evaluate is not None:
            self.on_evaluate(self, request.candidates)
        return errs

    def mean_errors(self, candidates: Sequence[int] | None = None) -> torch.Tensor:
        """Mean error over all trials so far (inf for a candidate never evaluated)."""
        cands = range(self.n_candidates) if candidates is None else candidates
        if self.weights is not None:
            return torch.tensor([float(self.trial_values(c).mean()) if self.errors[c] else float("inf") for c in cands])
        return torch.tensor(
            [sum(self.errors[c]) / len(self.errors[c]) if self.errors[c] else float("inf") for c in cands]
        )

    def trial_values(self, c: int) -> torch.Tensor:
        """Candidate c's errors times w[t] / mean(w) over its trials: their mean is the weighted mean error.

        The one place where timestep weights act; candidates on the same trials share the normalisation,
        so differences of their values are the paired, weighted differences a test needs.
        """
        e = torch.tensor(self.errors[c], dtype=torch.float64)
        if self.weights is None or not self.errors[c]:
            return e
        w = self.weights[[tr.t for tr in self.trials[c]]].double()
        return e * w / w.mean()

    def paired_gap(self, c: int, ref: int) -> float:
        """(Weighted) mean of c's minus ref's errors over the trials both have: a paired, comparable gap.

        Candidates dropped early have fewer trials than the winner; their plain means come from other
        timesteps and are not comparable, their gaps on shared trials are. inf when they share none.
        """
        ref_errors = dict(zip(self.trials[ref], self.errors[ref]))
        shared = [(tr, e) for tr, e in zip(self.trials[c], self.errors[c]) if tr in ref_errors]
        if not shared:
            return float("inf")
        d = torch.tensor([e - ref_errors[tr] for tr, e in shared], dtype=torch.float64)
        if self.weights is None:
            return float(d.mean())
        w = self.weights[[tr.t for tr, _ in shared]].double()
        return float((w * d).sum() / w.sum())

    def scores(self, candidates: Sequence[int]) -> torch.Tensor:
        """Minus each candidate's mean error as a float32 tensor, computed as the official code does.

        eval_prob_adaptive.py: `torch.tensor([-pred_errors.mean() ...])` over float32 errors in evaluation
        order; the same float32 values give torch.topk the same ties to break. -inf: never evaluated.
        """
        if self.weights is not None or not len(candidates):
            return -self.mean_errors(candidates).float()
        unseen = torch.tensor(-torch.inf)
        return torch.stack(
            [
                -torch.tensor(self.errors[c], dtype=torch.float32).mean() if self.errors[c] else unseen
                for c in candidates
            ]
        )

    def keep(self, candidates: Sequence[int], k: int) -> list[int]:
        """The k candidates of lowest mean error, best first, chosen (ties included) as the official code does:
        torch.topk(scores, k).indices. Recorded as the schedule's decision: ranking() puts them first."""
        candidates = list(candidates)
        self.kept = [candidates[i] for i in top_k(self.scores(candidates), k)]
        return self.kept

    def ranking(self) -> list[int]:
        """Candidates best first: the schedule's kept ones, then the rest by trials (more first), then by
        torch.topk over their scores (so exact ties fall as torch.topk lets them fall)."""
        kept = set(self.kept)
        rest = [c for c in range(self.n_candidates) if c not in kept]
        order = list(self.kept)
        for n in sorted({len(self.errors[c]) for c in rest}, reverse=True):
            group = [c for c in rest if len(self.errors[c]) == n]
            order += [group[i] for i in top_k(self.scores(group), len(group))]
        return order


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, best first: torch.topk's order, ties as torch.topk breaks them
    (the reference code's rule; not "lowest index first", and it may depend on k)."""
    return torch.topk(scores, min(k, len(scores))).indices.tolist()

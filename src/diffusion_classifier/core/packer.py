"""The packer: rows (image, candidate, trial) of every image in flight, packed into model calls of one size.

Each image in flight is a Flight: its latent, its condition rows and its schedule's steps (a generator
that yields Requests and is sent their errors; schedules.py). The packer keeps a queue of the rows of
the open requests and fills model calls of exactly the batch size from it, in order, opening the next
image whenever fewer than a call's rows are pending. A request's errors go back to its image as soon as
all its rows are done; the image's next request joins the queue, and an image whose steps end is
reported at once (streaming). Only when no image is left to open and the queue holds less than one call
is a short call made, so every call but the last few of a run is full.

Every call of a round is queued before the one transfer of their errors (call_errors), and each row's
error depends on its own (x0, t, eps, c) only: an image's errors do not depend on which images share its
calls. Tensors only: the model side (forward process, loss, fp16 redo) is estimator.model_errors.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import torch

from ..errors import UserInputError
from .estimator import CallErrors, Request, Segment

K = TypeVar("K")


class Flight(NamedTuple):
    """One image ready to fly: its latent, its candidates' condition rows and its schedule's steps."""

    x0: torch.Tensor  # (C, h, w), float32, on the model's device
    cond: torch.Tensor  # (n_candidates, ...) condition rows
    steps: Generator[Request, torch.Tensor, Any]
    seconds: float = 0.0  # time already spent on the image (opening and encoding it)


class Landed(NamedTuple):
    """An image whose steps ended (error None) or failed (the UserInputError its steps raised, or the
    exception that opening it gave); seconds: its opening plus its share of the model calls it was in."""

    key: Any
    error: BaseException | None
    seconds: float


@dataclass(eq=False)
class _Open:
    """An image in flight: its current request, the errors of its rows done so far, how many are missing."""

    key: Any
    flight: Flight
    seconds: float
    request: Request | None = None
    pairs: list = field(default_factory=list)
    errors: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    missing: int = 0


class _Span(NamedTuple):
    """Rows start:stop of an open image's current request."""

    image: _Open
    start: int
    stop: int


@dataclass
class PackStats:
    """What the packer did: model calls, rows, and the batch size it aimed at (fill = rows / calls / size)."""

    calls: int = 0
    rows: int = 0
    size: int = 0

    @property
    def fill(self) -> float:
        return self.rows / (self.calls * self.size) if self.calls else float("nan")


class Packer:
    """Packs the rows of many images' requests into model calls of batch_size rows (see the module docstring).

    call_errors: the errors of the rows of several calls (estimator.model_errors); batch_size: rows per
    call, asked again each round (the fast path halves its batch size on out-of-memory).
    """

    def __init__(self, call_errors: CallErrors, batch_size: Callable[[], int]):
        self.call_errors = call_errors
        self.batch_size = batch_size
        self.stats = PackStats()

    def run(self, flights: Iterable[tuple[K, Flight | BaseException]]) -> Iterator[Landed]:
        """Fly every image of flights (opened lazily, in order) and yield each as it lands."""
        source = iter(flights)
        queue: deque[_Span] = deque()
        landed: list[Landed] = []
        more = True
        while True:
            size = self.batch_size()
            while more and sum(s.stop - s.start for s in queue) < size:  # open images until a call is full
                item = next(source, None)
                if item is None:
                    more = False
                    break
                self._open(*item, queue, landed)
            yield from landed
            landed.clear()
            if not queue:  # every open image has its request's missing rows in the queue: none is open
                if not more:
                    return
                continue
            calls = self._calls(queue, size, short=not more)
            began = time.perf_counter()
            errors = self.call_errors([[Segment(s.image.flight.x0, s.image.flight.cond, s.image.pairs[s.start : s.stop])
                                        for s in call] for call in calls], size)  # fmt: skip
            self._share(calls, time.perf_counter() - began)
            self._answer(calls, errors, queue, landed)

    def _open(self, key: Any, flight: Flight | BaseException, queue: deque[_Span], landed: list[Landed]) -> None:
        """Start an image's steps, or land it at once (it failed to open)."""
        if isinstance(flight, BaseException):
            landed.append(Landed(key, flight, 0.0))
        else:
            self._step(_Open(key, flight, flight.seconds), None, queue, landed)

    def _step(self, image: _Open, errors: torch.Tensor | None, queue: deque[_Span], landed: list[Landed]) -> None:
        """Send an image its errors (None: start it); queue its next request's rows, or land it."""
        began = time.perf_counter()
        try:
            request = next(image.flight.steps) if errors is None else image.flight.steps.send(errors)
        except StopIteration:
            request = None
        except UserInputError as exc:  # this image's problem (e.g. its schedule's settings), not the run's
            landed.append(Landed(image.key, exc, image.seconds + time.perf_counter() - began))
            return
        image.seconds += time.perf_counter() - began
        if request is None:
            landed.append(Landed(image.key, None, image.seconds))
            return
        image.request, image.pairs = request, request.pairs
        image.errors, image.missing = torch.empty(len(image.pairs)), len(image.pairs)
        queue.append(_Span(image, 0, len(image.pairs)))

    def _calls(self, queue: deque[_Span], size: int, short: bool) -> list[list[_Span]]:
        """Take full calls of size rows off the queue's front; a short one only when no full one can be made
        and nothing else can join it (short)."""
        calls: list[list[_Span]] = []
        pending = sum(s.stop - s.start for s in queue)
        while pending >= size or (short and pending and not calls):
            call, need = [], min(size, pending)
            while need:
                span = queue.popleft()
                take = min(need, span.stop - span.start)
                call.append(_Span(span.image, span.start, span.start + take))
                if take < span.stop - span.start:
                    queue.appendleft(_Span(span.image, span.start + take, span.stop))
                need -= take
                pending -= take
            calls.append(call)
        self.stats.calls += len(calls)
        self.stats.rows += sum(s.stop - s.start for call in calls for s in call)
        self.stats.size = max(self.stats.size, size)
        return calls

    def _share(self, calls: list[list[_Span]], seconds: float) -> None:
        """Charge each image its share of the calls' time, by rows."""
        rows = sum(s.stop - s.start for call in calls for s in call)
        for call in calls:
            for s in call:
                s.image.seconds += seconds * (s.stop - s.start) / rows

    def _answer(
        self, calls: list[list[_Span]], errors: torch.Tensor, queue: deque[_Span], landed: list[Landed]
    ) -> None:
        """Put each row's error in its place; an image whose request is complete takes its next step."""
        done = 0
        for call in calls:
            for s in call:
                n = s.stop - s.start
                s.image.errors[s.start : s.stop] = errors[done : done + n]
                s.image.missing -= n
                done += n
                if not s.image.missing:
                    self._step(s.image, s.image.errors, queue, landed)

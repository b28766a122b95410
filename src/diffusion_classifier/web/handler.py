"""What one press of Classify does, without Gradio: the form in, a stream of page updates out."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from ..data.images import load_image
from ..data.prompts import Candidates
from ..errors import UserInputError
from ..pipeline import ClassificationResult, DiffusionClassifier, RaceEvent
from .inputs import check_template, choose_schedule, class_labels, parse_labels, preset_candidates, sketch_image
from .plot import error_figure

log = logging.getLogger(__name__)

UPLOAD, SKETCH = "upload", "sketch"
TOP = 5  # labels shown in the ranking and the figure's legend at most
#: The page's outputs, in the order build_demo lists them; an update names some of them.
OUTPUTS = ("message", "label", "race", "stats", "plot", "seen")


@dataclass(frozen=True)
class Form:
    """The page's inputs as the handler receives them."""

    source: str  # UPLOAD or SKETCH: the input tab last selected
    upload: str | None  # the uploaded file's path
    sketch: dict | None  # the sketchpad's {"background", "layers", "composite"} (numpy RGBA)
    labels: str  # the label text box
    preset: str
    template: str | None
    schedule: str
    seed: float | None


@dataclass(frozen=True)
class Page:
    """What the handler needs to know about the loaded model."""

    text_model: bool
    class_names: list[str] | None
    digit_size: int | None  # a one-channel class model draws digits framed like MNIST at this size


def page_of(clf: DiffusionClassifier) -> Page:
    model = clf.model
    text = model.conditioning != "class"
    names = None if text else list(model.class_names or []) or None
    digit = None if text or getattr(model, "channels", 3) != 1 else int(model.image_size)
    return Page(text_model=text, class_names=names, digit_size=digit)


def the_image(source: str, upload: str | None, sketch: dict | None, page: Page) -> Image.Image:
    """The image of the selected input tab, as a PIL image."""
    if source == SKETCH:
        if not sketch:
            raise UserInputError("the sketchpad is empty: draw something, or upload an image")
        return sketch_image(sketch.get("layers") or [], sketch.get("composite"), page.digit_size)
    if not upload:
        raise UserInputError("no image: upload one (or paste it), or draw on the sketchpad")
    try:
        return load_image(upload)
    except UserInputError:  # its message names Gradio's temporary copy: name the user's file instead
        raise UserInputError(
            f"cannot read {Path(upload).name!r} as an image: upload a PNG, JPEG or WebP file"
        ) from None


def shown(image: Image.Image, at_least: int = 112) -> Image.Image:
    """The image as the page shows it: small ones (28 px digits) enlarged with visible pixels; modes a browser
    image cannot hold (CMYK, P, LA, ...: load_image keeps the file's own) as RGBA."""
    image = image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGBA")
    factor = -(-at_least // max(1, min(image.size)))
    return image if factor <= 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


class Stopped(Exception):
    """Raised in the worker when the page stopped listening (the visitor left): the race ends there."""


def race(call: Callable[[Callable[[RaceEvent], None]], ClassificationResult]) -> Iterator[RaceEvent | Any]:
    """Run call(callback) in a thread; yield its RaceEvents as they come (the latest when several wait),
    then its result. Its exception is raised here, in the caller's thread. Closing this generator early
    stops the call at its next round, so an abandoned request does not keep the model busy."""
    events: queue.Queue = queue.Queue()
    done, stop = object(), threading.Event()
    outcome: dict[str, Any] = {}

    def callback(event: RaceEvent) -> None:
        if stop.is_set():
            raise Stopped
        events.put(event)

    def work() -> None:
        try:
            outcome["result"] = call(callback)
        except BaseException as exc:  # handed to the generator, which raises it where the page reports it
            outcome["error"] = exc
        events.put(done)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = events.get()
            while item is not done and not events.empty():  # skip stale rounds: the page shows the latest
                item = events.get()
            if item is done:
                break
            yield item
    finally:
        stop.set()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["result"]


def some(items: list[str], n: int = 40) -> str:
    """The first n items, space-separated, and how many more there are."""
    return " ".join(items[:n]) + (f" … and {len(items) - n} more" if len(items) > n else "")


def race_markdown(event: RaceEvent, labels: dict[int, str]) -> str:
    """Labels still in (best first, with their mean error so far), those already out, calls so far.
    labels: class index -> the label shown (class_labels)."""
    out = [f"~~{label}~~" for k, label in labels.items() if k not in event.remaining]
    lines = [
        f"**Race:** {len(event.remaining)} of {len(labels)} labels still in, "
        f"{event.calls:,} model calls so far (at most {event.max_calls:,})",
        "Still in (mean error so far): " + some([f"**{labels[k]}** {err:.4f}" for k, err in event.remaining.items()]),
    ]
    return "\n\n".join(lines + ([f"Out: {some(out)}"] if out else []))


def finish_markdown(result: ClassificationResult, cands: Candidates, labels: dict[int, str]) -> str:
    """The race's outcome: the winner, and how many trials each other class got before it was dropped."""
    trials = dict.fromkeys(labels, 0)
    for key, k in zip(cands.keys(), cands.class_ids):  # a class with several prompts: its longest-running one
        trials[k] = max(trials[k], len(result.errors[key]["values"]))
    winner = result.prediction_index
    out = sorted((k for k in trials if k != winner), key=lambda k: -trials[k])
    return (
        f"**Race finished:** **{labels[winner]}** won after {trials[winner]} trials "
        f"and {result.calls:,} model calls."
        + (f"\n\nOut (trials when dropped): {some([f'~~{labels[k]}~~ ({trials[k]})' for k in out])}" if out else "")
    )


def ranking(result: ClassificationResult, labels: dict[int, str]) -> dict[str, float]:
    """gr.Label's value: each class's shown label -> its probability (unique keys: two classes may share a name)."""
    return {labels[s["class_index"]]: float(s["probability"]) for s in result.scores}


def summary(result: ClassificationResult, labels: dict[int, str], schedule: str, loss: str, seed: int) -> str:
    return (
        f"**Prediction: {labels[result.prediction_index]}** · {result.calls:,} model calls · "
        f"{result.seconds:.2f} s · schedule {schedule} ({loss}) · seed {seed}"
    )


def figure(result: ClassificationResult, T: int):
    fig = error_figure(result.errors, T, k=TOP)
    FigureCanvasAgg(fig)  # a canvas without pyplot: Gradio saves the figure as an image
    return fig


def classify_updates(classifier: DiffusionClassifier, page: Page, form: Form) -> Iterator[dict[str, Any]]:
    """Page updates for one request: the model's input, then the race round by round, then the ranking,
    the summary and the figure. The first and the last update name every output (an API client gets the last
    one whole). Bad input ends in one update whose message says what is wrong, and clears the previous result
    so that no stale ranking stands next to it."""
    try:
        image = the_image(form.source, form.upload, form.sketch, page)
        template = check_template(form.template, page.text_model)
        prompts = preset_candidates(form.preset, page.text_model)
        cands = classifier.candidates(None if prompts else parse_labels(form.labels), template, prompts)
        classifier.conditions(cands.conditions)  # unknown class names fail now, not mid-race (and it is cached)
        schedule, loss = choose_schedule(form.schedule, classifier.model.default_schedule)
        seed = int(form.seed or 0)
        labels = class_labels(cands.class_names)
        seen = shown(image)
        yield {"message": "", "label": None, "race": "", "stats": "", "plot": None, "seen": seen}
        kwargs = {"prompts": cands, "schedule": schedule, "loss": loss, "seed": seed}
        for item in race(lambda callback: classifier(image, callback=callback, **kwargs)):
            if isinstance(item, RaceEvent):
                yield {"race": race_markdown(item, labels)}
            else:
                yield {
                    "message": "",
                    "label": ranking(item, labels),
                    "race": finish_markdown(item, cands, labels),
                    "stats": summary(item, labels, form.schedule, loss, seed),
                    "plot": figure(item, classifier.model.num_train_timesteps),
                    "seen": seen,
                }
    except UserInputError as exc:
        yield failed("Cannot classify", str(exc))
    except Exception as exc:  # a bug must not take the page down: say so, log the traceback
        log.exception("classification failed")
        yield failed("Internal error", f"{type(exc).__name__}: {exc}")


def failed(what: str, why: str) -> dict[str, Any]:
    """The update of a failed request: the message (also as a pop-up warning), all else cleared."""
    return {"message": f"**{what}:** {why}", "warning": why, "label": None, "race": "", "stats": "", "plot": None,
            "seen": None}  # fmt: skip

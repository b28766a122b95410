"""The Gradio page: one loaded DiffusionClassifier; an image and labels in, the live race and the ranking out."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from ..data.images import load_image
from ..errors import UserInputError
from ..pipeline import ClassificationResult, DiffusionClassifier, RaceEvent
from ..schedules import schedule_names
from .inputs import (
    MODEL_CLASSES,
    TYPED,
    check_template,
    choose_schedule,
    parse_labels,
    preset_candidates,
    preset_labels,
    preset_names,
    sketch_image,
)
from .plot import error_figure

log = logging.getLogger(__name__)

UPLOAD, SKETCH = "upload", "sketch"
TOP = 5  # labels shown in the ranking and the figure's legend at most


class ImagePath(gr.Image):
    """gr.Image that hands the handler the uploaded file's path unread: an unreadable file then becomes the
    page's own message (load_image's UserInputError) instead of Gradio's bare "Error" from its preprocess."""

    is_template = True  # the browser side is gr.Image's

    def preprocess(self, payload: Any) -> str | None:
        if payload is None or payload.path is None:
            return super().preprocess(payload)  # pasted data: URLs are decoded by Gradio
        return str(payload.path)


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
    return load_image(upload)


def race(call: Callable[[Callable[[RaceEvent], None]], ClassificationResult]) -> Iterator[RaceEvent | Any]:
    """Run call(callback) in a thread; yield its RaceEvents as they come (the latest when several wait),
    then its result. Its exception is raised here, in the caller's thread."""
    events: queue.Queue = queue.Queue()
    done = object()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = call(events.put)
        except BaseException as exc:  # handed to the generator, which raises it where the page reports it
            outcome["error"] = exc
        events.put(done)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = events.get()
        while item is not done and not events.empty():  # skip stale rounds: the page shows the latest
            item = events.get()
        if item is done:
            break
        yield item
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["result"]


def race_markdown(event: RaceEvent, all_labels: list[str]) -> str:
    """Labels still in (best first, with their mean error so far), those already out, calls so far."""
    still = " · ".join(f"**{label}** {err:.4f}" for label, err in event.remaining.items())
    out = [label for label in all_labels if label not in event.remaining]
    lines = [
        f"**Race:** {len(event.remaining)} of {len(all_labels)} labels still in, "
        f"{event.calls:,} model calls so far (at most {event.max_calls:,})",
        f"Still in (mean error so far): {still}",
    ]
    if out:
        lines.append("Out: " + " ".join(f"~~{label}~~" for label in out[:50]) + (" …" if len(out) > 50 else ""))
    return "\n\n".join(lines)


def ranking(result: ClassificationResult) -> dict[str, float]:
    return {s["label"]: float(s["probability"]) for s in result.scores}


def summary(result: ClassificationResult, schedule: str, loss: str, seed: int) -> str:
    return (
        f"**Prediction: {result.prediction}** · {result.calls:,} model calls · {result.seconds:.2f} s · "
        f"schedule {schedule} ({loss}) · seed {seed}"
    )


def figure(result: ClassificationResult, T: int):
    fig = error_figure(result.errors, T, k=TOP)
    FigureCanvasAgg(fig)  # a canvas without pyplot: Gradio saves the figure as an image
    return fig


def build_demo(classifier: DiffusionClassifier, title: str = "Diffusion Classifier") -> gr.Blocks:
    """The page as a gr.Blocks app around one loaded classifier (launch it, or mount it in a FastAPI app).

    Requests queue and run one at a time: the classifier holds one model.
    """
    page = page_of(classifier)
    T = classifier.model.num_train_timesteps
    default_preset = MODEL_CLASSES if page.class_names else TYPED
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {title}\nEach label is scored by how well the diffusion model predicts the noise added to the "
            "image when told that label, on the same (timestep, noise) trials for every label; the lowest error "
            f"wins. Model: `{getattr(classifier.model, 'name', '') or type(classifier.model).__name__}`."
        )
        source = gr.State(UPLOAD)
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Upload or paste", id=UPLOAD) as upload_tab:
                        upload = ImagePath(
                            type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="dc-image"
                        )
                    with gr.Tab("Draw", id=SKETCH) as sketch_tab:
                        sketch = sketchpad(page)
                labels = gr.Textbox(
                    value="\n".join(preset_labels(default_preset, page.class_names)),
                    lines=4,
                    max_lines=12,
                    label="Labels (one per line, or comma-separated)",
                    elem_id="dc-labels",
                )
                preset = gr.Dropdown(preset_names(page.class_names), value=default_preset, label="Labels from")
                template = gr.Textbox(
                    value="",
                    label="Template (text models; empty: 'a photo of a {}.'; presets use their published prompts)",
                    visible=page.text_model,
                )
                with gr.Row():
                    schedule = gr.Dropdown(
                        schedule_names(), value="racing", label="Schedule (racing, or a published one by name)"
                    )
                    seed = gr.Number(value=0, precision=0, label="Seed")
                button = gr.Button("Classify", variant="primary", elem_id="dc-classify")
            with gr.Column():
                message = gr.Markdown(elem_id="dc-message")
                label_out = gr.Label(num_top_classes=TOP, label="Labels, ranked (probability)", elem_id="dc-label")
                progress = gr.Markdown(elem_id="dc-race")
                stats = gr.Markdown(elem_id="dc-stats")
                plot = gr.Plot(label="Mean error against timestep (top) and the gap to the winner (bottom)")
                seen = gr.Image(label="What the model sees", height=140, interactive=False, elem_id="dc-seen")

        upload_tab.select(lambda: UPLOAD, outputs=source, queue=False)
        sketch_tab.select(lambda: SKETCH, outputs=source, queue=False)
        preset.input(lambda p: "\n".join(preset_labels(p, page.class_names)), inputs=preset, outputs=labels)
        labels.input(lambda: TYPED, outputs=preset, queue=False)  # typing makes the labels the typed ones

        def classify(upload_path, sketch_value, source_tab, labels_text, preset_name, template_text, sched, seed_v):
            outputs = [message, label_out, progress, stats, plot, seen]
            blank = {o: gr.update() for o in outputs}
            try:
                image = the_image(source_tab, upload_path, sketch_value, page)
                template_ok = check_template(template_text, page.text_model)
                prompts = preset_candidates(preset_name, page.text_model)
                cands = classifier.candidates(None if prompts else parse_labels(labels_text), template_ok, prompts)
                schedule_obj, loss = choose_schedule(sched, getattr(classifier.model, "default_schedule", None))
                seed_i = int(seed_v or 0)
                yield {**blank, message: "", label_out: None, stats: "", plot: None, seen: image}
                kwargs = {"prompts": cands, "schedule": schedule_obj, "loss": loss, "seed": seed_i}
                for item in race(lambda cb: classifier(image, callback=cb, **kwargs)):
                    if isinstance(item, RaceEvent):
                        yield {**blank, progress: race_markdown(item, cands.unique_labels)}
                    else:
                        yield {
                            **blank,
                            label_out: ranking(item),
                            stats: summary(item, sched, loss, seed_i),
                            plot: figure(item, T),
                        }
            except UserInputError as exc:
                gr.Warning(str(exc))
                yield {**blank, message: f"**Cannot classify:** {exc}"}
            except Exception as exc:  # a bug must not take the page down: say so, log the traceback
                log.exception("classification failed")
                yield {**blank, message: f"**Internal error:** {type(exc).__name__}: {exc}"}

        button.click(
            classify,
            inputs=[upload, sketch, source, labels, preset, template, schedule, seed],
            outputs=[message, label_out, progress, stats, plot, seen],
            api_name="classify",
        )
    demo.queue(default_concurrency_limit=1)
    return demo


def sketchpad(page: Page) -> gr.Sketchpad:
    """A canvas to draw on; for a digit model white ink on black, as the digits it was trained on."""
    if page.digit_size is None:
        return gr.Sketchpad(label="Draw", type="numpy", image_mode="RGBA", canvas_size=(512, 512))
    black = Image.new("RGB", (280, 280), "black")
    return gr.Sketchpad(
        value={"background": black, "layers": [], "composite": None},
        label="Draw a digit",
        type="numpy",
        image_mode="RGBA",
        canvas_size=(280, 280),
        fixed_canvas=True,
        brush=gr.Brush(default_size=12, colors=["#ffffff"], color_mode="fixed"),
        elem_id="dc-sketch",
    )

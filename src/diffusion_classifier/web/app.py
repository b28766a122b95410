"""The Gradio page: its layout and events around one loaded DiffusionClassifier (the work is in handler.py)."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from ..core.schedules import schedule_names
from ..pipeline import DiffusionClassifier
from .handler import OUTPUTS, SKETCH, TOP, UPLOAD, Form, Page, classify_updates, page_of
from .inputs import MODEL_CLASSES, TYPED, preset_labels, preset_names

INTRO = (
    "Each label is scored by how well the diffusion model predicts the noise added to the image when told that "
    "label, on the same (timestep, noise) trials for every label; the lowest error wins. With the racing schedule "
    "a label drops out as soon as a paired t-test says it is worse than the best one."
)


def image_upload() -> gr.Image:
    """An image upload (or paste) whose handler gets the file's path unread: an unreadable file then becomes
    the page's own message instead of the bare "Error" of Gradio's preprocess (PIL.Image.open).

    The preprocess is replaced on the instance: a gr.Image subclass would make Gradio write a .pyi stub
    beside this module at import time."""
    image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", height=240, elem_id="dc-image")
    decode = image.preprocess

    def path_unread(payload: Any) -> str | None:
        if payload is None or payload.path is None:
            return decode(payload)  # pasted data: URLs are decoded by Gradio
        return str(payload.path)

    image.preprocess = path_unread
    return image


def sketchpad(page: Page) -> gr.Sketchpad:
    """A canvas to draw on; for a digit model white ink on black, like the digits it was trained on."""
    if page.digit_size is None:
        return gr.Sketchpad(label="Draw", type="numpy", image_mode="RGBA", canvas_size=(512, 512), elem_id="dc-sketch")
    return gr.Sketchpad(
        value={"background": Image.new("RGB", (280, 280), "black"), "layers": [], "composite": None},
        label="Draw a digit",
        type="numpy",
        image_mode="RGBA",
        canvas_size=(280, 280),
        fixed_canvas=True,
        brush=gr.Brush(default_size=12, colors=["#ffffff"], color_mode="fixed"),
        elem_id="dc-sketch",
    )


def build_demo(classifier: DiffusionClassifier, title: str = "Diffusion Classifier", model_name: str = "") -> gr.Blocks:
    """The page as a gr.Blocks app around one loaded classifier (launch it, or mount it in a FastAPI app).

    Requests queue and run one at a time: the classifier holds one model.
    """
    page = page_of(classifier)
    default_preset = MODEL_CLASSES if page.class_names else TYPED
    name = model_name or getattr(classifier.model, "name", "") or type(classifier.model).__name__
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\n{INTRO} Model: `{name}`.")
        source = gr.State(UPLOAD)
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Upload or paste", id=UPLOAD) as upload_tab:
                        upload = image_upload()
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
                    label="Template with {} for the label (empty: 'a photo of a {}.'; presets use their published "
                    "prompts)",
                    visible=page.text_model,
                    elem_id="dc-template",
                )
                with gr.Row():
                    schedule = gr.Dropdown(
                        schedule_names(), value="racing", label="Schedule (racing, or a published one by name)"
                    )
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed of the trial noise")
                button = gr.Button("Classify", variant="primary", elem_id="dc-classify")
            with gr.Column():
                outputs = [
                    gr.Markdown(label="message", elem_id="dc-message"),
                    gr.Label(num_top_classes=TOP, label="Labels, ranked (probability)", elem_id="dc-label"),
                    gr.Markdown(label="race", elem_id="dc-race"),
                    gr.Markdown(label="summary", elem_id="dc-stats"),
                    gr.Plot(
                        label="Mean error against timestep (top) and the gap to the winner (bottom)", elem_id="dc-plot"
                    ),
                    gr.Image(label="Image classified", height=140, interactive=False, elem_id="dc-seen"),
                ]

        private = {"api_visibility": "private"}  # page mechanics, not API endpoints
        upload_tab.select(lambda: UPLOAD, outputs=source, queue=False, **private)
        sketch_tab.select(lambda: SKETCH, outputs=source, queue=False, **private)
        preset.input(lambda p: "\n".join(preset_labels(p, page.class_names)), inputs=preset, outputs=labels, **private)
        labels.input(lambda: TYPED, outputs=preset, queue=False, **private)  # edited labels are typed labels

        def classify(source, image, sketch, labels, preset, template, schedule, seed):  # names: the API's
            form = Form(source, image, sketch, labels, preset, template, schedule, seed)
            for update in classify_updates(classifier, page, form):
                if "warning" in update:
                    gr.Warning(update["warning"])
                yield [update.get(key, gr.update()) for key in OUTPUTS]

        button.click(
            classify,
            inputs=[source, upload, sketch, labels, preset, template, schedule, seed],
            outputs=outputs,
            api_name="classify",
        )
    demo.queue(default_concurrency_limit=1)
    return demo

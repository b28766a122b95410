"""What the page's inputs mean: label text, presets, sketches and schedules, as pure functions (no Gradio)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..core.schedules import Racing, Schedule, get_schedule
from ..data import prompts
from ..data.prompts import Candidates, published_prompts, read_prompts_csv
from ..errors import UserInputError

#: The label presets besides the typed labels and the model's classes: preset name -> bundled prompt table.
PRESET_TABLES: dict[str, str] = {"CIFAR-10": "cifar10", "STL-10": "stl10", "Pets": "pets", "ImageNet": "imagenet"}
TYPED = "typed labels"
MODEL_CLASSES = "the model's classes"

# MNIST frames each digit by fitting its ink into a 20 x 20 box of the 28 x 28 image, then centring its mass.
MNIST_BOX = 20 / 28


def parse_labels(text: str | None) -> list[str]:
    """Labels from the text box: one per line, or comma-separated when all are on one line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [x.strip() for x in lines[0].split(",") if x.strip()]
    if not lines:
        raise UserInputError("no labels: type some (one per line, or comma-separated) or choose a preset")
    return lines


def preset_names(class_names: list[str] | None) -> list[str]:
    """The choices of the preset menu for a model: the typed labels, its own classes if it has any, the tables."""
    return [TYPED, *([MODEL_CLASSES] if class_names else []), *PRESET_TABLES]


def class_labels(class_names: dict[int, str]) -> dict[int, str]:
    """class index -> the label the page shows for it: its name, "classidx:name" where two classes share
    the name (the published ImageNet table's two "missile" classes, 657 and 744). gr.Label needs unique ones."""
    names = list(class_names.values())
    return {k: name if names.count(name) == 1 else f"{k}:{name}" for k, name in class_names.items()}


def preset_labels(preset: str, class_names: list[str] | None) -> list[str]:
    """The classes of a preset as the page shows them (the text box and the ranking); [] for the typed labels."""
    if preset == MODEL_CLASSES:
        return list(class_names or [])
    if preset in PRESET_TABLES:
        return list(class_labels(read_prompts_csv(published_prompts(PRESET_TABLES[preset])).class_names).values())
    return []


def preset_candidates(preset: str, text_model: bool) -> Candidates | None:
    """A text model's published prompts for a table preset (several per class allowed); None otherwise."""
    if text_model and preset in PRESET_TABLES:
        return read_prompts_csv(published_prompts(PRESET_TABLES[preset]))
    return None


def check_template(template: str | None, text_model: bool) -> str | None:
    """The template to use: None when blank; a malformed one (data/prompts.py's rules) or one given to a
    class model is an error."""
    template = (template or "").strip() or None
    if template is None:
        return None
    prompts.check_template(template)
    if not text_model:
        raise UserInputError("this model is conditioned on class ids: leave the template empty")
    return template


def choose_schedule(name: str, model_default: tuple[Schedule, str] | None) -> tuple[Schedule, str]:
    """A named schedule and its loss; 'racing' keeps the model's own racing settings where it has them.

    (builtin:mnist races at alpha 0.01, tuned on its training digits; see its classifier_config.json.)
    """
    if name == "racing" and model_default is not None and isinstance(model_default[0], Racing):
        return model_default
    return get_schedule(name)


def ink(layers: list[np.ndarray]) -> np.ndarray:
    """Where the sketch has strokes, in [0, 1] (H, W): the largest alpha over the drawn RGBA layers."""
    alphas = [np.asarray(layer, dtype=np.float32)[..., 3] / 255.0 for layer in layers if np.ndim(layer) == 3]
    if not alphas or max(float(a.max()) for a in alphas) == 0.0:
        raise UserInputError("the sketchpad is empty: draw something, or upload an image")
    return np.max(np.stack(alphas), axis=0)


def mnist_digit(strokes: np.ndarray, size: int = 28) -> Image.Image:
    """A drawing (ink in [0, 1]) framed as MNIST frames digits: white on black, the ink fitted into a
    20/28 box keeping its aspect ratio, its centre of mass in the centre of a size x size image."""
    rows, cols = np.nonzero(strokes > 0.05)
    crop = strokes[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(size * MNIST_BOX))
    scale = box / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = np.asarray(Image.fromarray(np.uint8(crop * 255)).resize((w, h), Image.Resampling.LANCZOS), np.float32)
    total = small.sum()
    cy, cx = (np.indices(small.shape) * small).reshape(2, -1).sum(1) / total if total > 0 else (h / 2, w / 2)
    top = int(np.clip(round(size / 2 - cy), 0, size - h))
    left = int(np.clip(round(size / 2 - cx), 0, size - w))
    out = np.zeros((size, size), np.float32)
    out[top : top + h, left : left + w] = small
    return Image.fromarray(np.uint8(np.clip(out, 0, 255)), mode="L")


def sketch_image(layers: list[np.ndarray], composite: np.ndarray | None, digit_size: int | None) -> Image.Image:
    """The image a sketch stands for: an MNIST-framed digit for a digit model (digit_size given), else the
    composite drawing flattened on white."""
    strokes = ink(layers)
    if digit_size is not None:
        return mnist_digit(strokes, digit_size)
    rgba = Image.fromarray(np.asarray(composite, dtype=np.uint8)).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")

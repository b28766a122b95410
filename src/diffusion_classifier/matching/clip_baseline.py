"""CLIP zero-shot baselines in the same harness: the image x text logit matrix, a matcher and a classifier.

The CLIP model, its tokenizer, the preprocessing (no torchvision) and the cached, normalised text and
image features come from shortlist.ClipShortlist: one CLIP loader and one feature path in the package.
Here they become CLIP's logits, logit_scale * cos(image, text) (what CLIPModel returns as
logits_per_image), scored the way the diffusion model's pairs and labels are scored.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.images import load_image
from ..data.prompts import DEFAULT_TEMPLATE, Candidates, from_template
from ..errors import UserInputError
from ..pipeline import ClassificationResult
from .shortlist import ClipShortlist, best_per_class

BASELINE_KINDS = ("clip",)


def parse_baseline(spec: str) -> str:
    """The model of a '--baseline clip:MODEL' spec (hub id or folder)."""
    kind, _, model = spec.partition(":")
    if kind not in BASELINE_KINDS or not model:
        raise UserInputError(f"bad --baseline {spec!r}: use clip:MODEL, e.g. clip:openai/clip-vit-large-patch14")
    return model


def load_clip(model: str | Path | ClipShortlist, device: str | torch.device | None = None) -> ClipShortlist:
    """A loaded CLIP model (hub id or folder); an already loaded one is returned as is."""
    return model if isinstance(model, ClipShortlist) else ClipShortlist(model, device=device)


@torch.inference_mode()
def clip_logits(
    model: str | Path | ClipShortlist, images: Sequence[Any], texts: Sequence[str], device: str | None = None
) -> torch.Tensor:
    """CLIP's logits (n_images, n_texts): logit_scale * cosine similarity, float32 on the CPU.

    images: PIL images or image files; texts are read as given (no template).
    """
    clip = load_clip(model, device)
    text = clip.text_features(list(texts))  # (n_texts, d), unit norm
    image = torch.stack([clip.image_features(load_image(img)) for img in images])  # (n_images, d), unit norm
    return clip.model.logit_scale.exp().float().cpu() * image @ text.T


@dataclass
class ClipMatcher:
    """A PairScorer: scores[k, j] = CLIP's logit of image k and caption j."""

    clip: ClipShortlist
    name: str = "clip"

    @classmethod
    def from_spec(cls, spec: str, device: str | None = None) -> ClipMatcher:
        """From '--baseline clip:MODEL'."""
        return cls(load_clip(parse_baseline(spec), device), name=spec)

    def __call__(self, images: Sequence[Image.Image], captions: Sequence[str]) -> torch.Tensor:
        return clip_logits(self.clip, images, captions).double()

    def describe(self) -> dict[str, Any]:
        return {"scorer": "clip", "model": self.name}


class ClipClassifier:
    """CLIP zero-shot classification with DiffusionClassifier's call signature, for `eval --baseline`.

    A label's candidates are its prompts ("a photo of a {}." by default); its score is the best of their
    logits, so a run record reads like a diffusion run's with minus the logit in place of the error.
    Schedule arguments are accepted and ignored: CLIP spends no diffusion model calls.
    """

    def __init__(self, clip: ClipShortlist, name: str = "clip"):
        self.clip = clip
        self.name = name
        self.model = _ClipInfo(name)

    @classmethod
    def from_spec(cls, spec: str, device: str | None = None) -> ClipClassifier:
        return cls(load_clip(parse_baseline(spec), device), name=spec)

    def candidates(
        self, labels: list[str] | None = None, template: str | None = None, prompts: Candidates | None = None
    ) -> Candidates:
        return prompts if prompts is not None else from_template(labels or [], template or DEFAULT_TEMPLATE)

    def classify_stream(
        self, images: Iterable[Any], **kwargs: Any
    ) -> Iterator[tuple[int, ClassificationResult | Exception]]:
        """(position, result or the exception) for each image, as DiffusionClassifier.classify_stream yields them;
        an item may be a zero-argument function that returns the image (e.g. a dataset's decoder)."""
        for position, item in enumerate(images):
            try:
                image = item() if callable(item) else item
            except Exception as exc:  # a decoder's failure is this image's, as in the diffusion stream
                yield position, exc
                continue
            try:
                yield position, self(image, **kwargs)
            except UserInputError as exc:
                yield position, exc

    def __call__(
        self,
        image: Any,
        labels: list[str] | None = None,
        *,
        template: str | None = None,
        prompts: Candidates | None = None,
        **_: Any,
    ) -> ClassificationResult:
        began = time.perf_counter()
        cands = self.candidates(labels, template, prompts)
        logits = clip_logits(self.clip, [load_image(image)], list(cands.conditions))[0].tolist()
        ranked = best_per_class(cands.class_ids, logits)
        probs = torch.tensor(list(ranked.values())).softmax(0).tolist()  # CLIP's zero-shot p(class | image)
        names = cands.class_names
        scores = [
            {"label": names[k], "class_index": k, "score": v, "probability": p}
            for (k, v), p in zip(ranked.items(), probs)
        ]
        return ClassificationResult(
            image=str(image) if isinstance(image, (str, Path)) else None,
            prediction=scores[0]["label"],
            prediction_index=scores[0]["class_index"],
            scores=scores,
            errors={},
            calls=0,
            seconds=time.perf_counter() - began,
        )


@dataclass
class _ClipInfo:
    """The few adapter attributes the eval harness reads from a classifier's model."""

    name: str
    conditioning: str = "text"
    num_train_timesteps: int = 1000  # lets schedule options parse; CLIP ignores them
    default_schedule: None = None  # CLIP spends no diffusion calls: the run records the dataset's default

    def describe(self) -> dict[str, Any]:
        return {"adapter": "CLIP", "model": self.name}

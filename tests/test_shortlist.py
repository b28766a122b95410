"""CLIP shortlists with the tiny CLIP built from config (random weights, saved and loaded back by path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier import DiffusionClassifier, UserInputError
from diffusion_classifier.data.prompts import from_labels
from diffusion_classifier.matching.shortlist import ClipShortlist, parse_shortlist, preprocess
from diffusion_classifier.models.gaussian import GaussianClassModel

LABELS = [str(d) for d in range(10)]


def digit(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8))


def test_preprocess_matches_transformers_pil_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    yy, xx = np.mgrid[0:40, 0:56]
    smooth = np.stack([4 * xx, 6 * yy, 2 * (xx + yy)], -1).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(smooth)  # smooth, so rounding in the resamplers matters little
    ref = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = torch.as_tensor(np.asarray(ref(img)["pixel_values"][0]))
    ours = preprocess(img, 32)
    assert ours.shape == (3, 32, 32)
    assert (ours - expected).abs().mean() < 0.02  # same resize, crop and normalisation up to rounding


def test_scores_are_clip_similarities(tiny_clip_path):
    from transformers import AutoTokenizer, CLIPModel

    sl = ClipShortlist(tiny_clip_path, device="cpu")
    img = digit(1)
    scores = sl.label_scores(img, from_labels(LABELS))
    assert list(scores) == sorted(scores, key=lambda k: -scores[k])  # best first
    model = CLIPModel.from_pretrained(tiny_clip_path, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip_path)
    prompts = [f"a photo of a {x}." for x in LABELS]
    with torch.inference_mode():
        out = model(**tok(prompts, padding=True, return_tensors="pt"), pixel_values=preprocess(img, 32)[None])
        ref = out.logits_per_image[0] / model.logit_scale.exp()  # cosine similarities
    for i, label in enumerate(LABELS):
        assert scores[label] == pytest.approx(float(ref[i]), abs=1e-4)


def test_select_keeps_the_top_k_labels(tiny_clip_path):
    sl = ClipShortlist(tiny_clip_path, device="cpu")
    cands = from_labels(LABELS)
    top = list(sl.label_scores(digit(2), cands))[:3]
    picked = sl.select(digit(2), cands, 3)
    assert sorted(picked.labels) == sorted(top) and len(picked) == 3
    assert len(sl.select(digit(2), cands, 50)) == 10
    with pytest.raises(UserInputError):
        sl.select(digit(2), cands, 0)


class PixelGaussian(GaussianClassModel):
    """The analytic model on 8x8 grayscale images, so a CLIP shortlist can see them."""

    def encode(self, image):
        if isinstance(image, Image.Image):
            arr = np.asarray(image.convert("L").resize((8, 8)), dtype=np.float32) / 127.5 - 1
            return torch.from_numpy(arr).reshape(self.latent_shape)
        return super().encode(image)


def test_pipeline_classifies_only_the_shortlist(tiny_clip_path):
    g = torch.Generator().manual_seed(0)
    clf = DiffusionClassifier(PixelGaussian(torch.randn(10, 1, 8, 8, generator=g) * 0.4))
    img = digit(3)
    spec = f"clip:{tiny_clip_path}"
    res = clf(img, schedule="racing", shortlist=spec, shortlist_k=4)
    top = list(clf.shortlist(spec).label_scores(img, from_labels(LABELS)))[:4]
    assert sorted(res.extra["shortlist"]) == sorted(top)
    assert sorted(s["label"] for s in res.scores) == sorted(top)
    assert res.to_dict()["shortlist"] == res.extra["shortlist"]
    assert sum(s["probability"] for s in res.scores) == pytest.approx(1.0)


def test_bad_shortlist_specs():
    for spec in ("openclip:foo", "clip:", "foo"):
        with pytest.raises(UserInputError):
            parse_shortlist(spec)
    with pytest.raises(UserInputError):
        ClipShortlist("/nonexistent/clip-folder")

"""CLIP shortlists with a tiny CLIP built from config (random weights, saved and loaded back by path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier import DiffusionClassifier, UserInputError
from diffusion_classifier.data.prompts import from_labels
from diffusion_classifier.matching.shortlist import ClipShortlist, parse_shortlist, preprocess
from diffusion_classifier.models.gaussian import GaussianClassModel

LABELS = [str(d) for d in range(10)]


def byte_chars() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: printable bytes as themselves, the rest shifted past 255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIP (2 layers, width 32, 32 px) with a byte-level tokenizer and no merges."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    chars = byte_chars()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"))
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    eos = vocab["<|endoftext|>"]
    text = dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=eos - 1, eos_token_id=eos, **small)
    text["pad_token_id"] = eos
    cfg = CLIPConfig(text_config=text, vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return d / "model"


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


def test_scores_are_clip_similarities(clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    sl = ClipShortlist(clip_dir, device="cpu")
    img = digit(1)
    scores = sl.label_scores(img, from_labels(LABELS))
    assert list(scores) == sorted(scores, key=lambda k: -scores[k])  # best first
    model = CLIPModel.from_pretrained(clip_dir, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    prompts = [f"a photo of a {x}." for x in LABELS]
    with torch.inference_mode():
        out = model(**tok(prompts, padding=True, return_tensors="pt"), pixel_values=preprocess(img, 32)[None])
        ref = out.logits_per_image[0] / model.logit_scale.exp()  # cosine similarities
    for i, label in enumerate(LABELS):
        assert scores[label] == pytest.approx(float(ref[i]), abs=1e-4)


def test_select_keeps_the_top_k_labels(clip_dir):
    sl = ClipShortlist(clip_dir, device="cpu")
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


def test_pipeline_classifies_only_the_shortlist(clip_dir):
    g = torch.Generator().manual_seed(0)
    clf = DiffusionClassifier(PixelGaussian(torch.randn(10, 1, 8, 8, generator=g) * 0.4))
    img = digit(3)
    spec = f"clip:{clip_dir}"
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

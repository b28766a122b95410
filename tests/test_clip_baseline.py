"""CLIP baselines: the logit matrix equals CLIPModel's, zero-shot classification, and CLIP in match / winoground."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier.cli import main
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.matching.clip_baseline import (
    ClipClassifier,
    ClipMatcher,
    clip_logits,
    load_clip,
    parse_baseline,
)
from diffusion_classifier.matching.winoground import PairScores

TEXTS = ["a photo of a cat.", "a photo of a dog.", "a drawing"]


@pytest.fixture(scope="module")
def square_images():
    """Square images whose CLIP preprocessing is exact: 32 px (no resize) and 64 px (a plain 2x bicubic)."""
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, size=(s, s, 3), dtype=np.uint8)) for s in (32, 64, 32)]


@pytest.fixture(scope="module")
def clip(tiny_clip_path):
    return load_clip(tiny_clip_path, device="cpu")


def test_logits_equal_clipmodel_logits_per_image(tiny_clip_path, clip, square_images):
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_path).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip_path)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    pixels = []
    for img in square_images:
        img = img.resize((32, 32), Image.Resampling.BICUBIC) if img.size != (32, 32) else img
        x = torch.tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1) / 255.0
        pixels.append((x - mean) / std)
    with torch.no_grad():
        ids = tok(TEXTS, padding=True, return_tensors="pt")
        want = model(**ids, pixel_values=torch.stack(pixels)).logits_per_image
    got = clip_logits(clip, square_images, TEXTS)
    assert got.shape == (3, 3)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    # the loader accepts a folder as well as a loaded model, and texts are read as given
    assert torch.allclose(clip_logits(tiny_clip_path, square_images[:1], TEXTS[:2]), want[:1, :2], atol=1e-5)


def test_zero_shot_classifier_uses_the_photo_template(clip, square_images):
    clf = ClipClassifier(clip, name="clip:tiny")
    labels = ["cat", "dog", "bird"]
    logits = clip_logits(clip, square_images[1:2], [f"a photo of a {x}." for x in labels])[0]
    result = clf(square_images[1], labels, schedule="ignored", seed=3)
    assert result.prediction == labels[int(logits.argmax())]
    assert [s["label"] for s in result.scores] == [labels[i] for i in logits.argsort(descending=True).tolist()]
    assert result.scores[0]["score"] == pytest.approx(float(logits.max()), rel=1e-6)
    assert result.calls == 0
    custom = clf(square_images[1], labels, template="{}")
    assert custom.scores != result.scores


def test_matcher_in_winoground_order(clip, square_images):
    m = ClipMatcher(clip, name="clip:tiny")
    scores = m(square_images[:2], ["x", "y"])
    logits = clip_logits(clip, square_images[:2], ["x", "y"])
    pairs = PairScores.from_matrix(scores)
    assert pairs.c0_i1 == pytest.approx(float(logits[1, 0])) and pairs.c1_i0 == pytest.approx(float(logits[0, 1]))


def test_baseline_spec():
    assert parse_baseline("clip:openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"
    for bad in ("clip:", "openclip:x", "x"):
        with pytest.raises(UserInputError, match="--baseline"):
            parse_baseline(bad)


def test_match_with_a_baseline_only(tiny_clip_path, image_files, capsys):
    argv = ["match", "--baseline", f"clip:{tiny_clip_path}", "--images", *map(str, image_files), "--captions", *TEXTS]
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["scorer"] == f"clip:{tiny_clip_path}"
    want = clip_logits(tiny_clip_path, image_files, TEXTS)
    assert np.allclose(got["scores"], want.numpy(), rtol=1e-5)


def test_winoground_baseline_beside_the_diffusion_model(tiny_sd_path, tiny_clip_path, tmp_path, capsys):
    """With --model and --baseline, the diffusion results are on top and CLIP's under "baselines"."""
    root = tmp_path / "wg"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    rows = []
    for i, tag in enumerate(["Relation", "Object"]):
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)).save(
                root / "images" / f"{i}{k}.png"
            )
        rows.append({"id": i, "caption_0": f"x {i} y", "caption_1": f"y {i} x", "image_0": f"{i}0", "image_1": f"{i}1"})
        rows[-1]["collapsed_tag"] = tag
    (root / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = f"clip:{tiny_clip_path}"
    argv = ["winoground", "--data-dir", str(root), "--baseline", spec, "--json", "--device", "cpu"]
    assert main([*argv, "--model", str(tiny_sd_path), "--t-interval", "500"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["scorer"] == "diffusion" and list(both["baselines"]) == [spec]
    base = both["baselines"][spec]
    for r, ex in zip(rows, base["examples"]):
        imgs = [Image.open(root / "images" / f"{r[f'image_{k}']}.png") for k in range(2)]
        logits = clip_logits(tiny_clip_path, imgs, [r["caption_0"], r["caption_1"]])
        assert ex["c1_i0"] == pytest.approx(float(logits[0, 1]), rel=1e-5)
        assert ex["c0_i1"] == pytest.approx(float(logits[1, 0]), rel=1e-5)
    assert main(argv) == 0  # the baseline alone is the top-level result
    alone = json.loads(capsys.readouterr().out)
    assert alone["scorer"] == spec and "baselines" not in alone
    assert all(a == pytest.approx(b) for a, b in zip(alone["examples"], base["examples"], strict=True))


def test_eval_with_a_clip_baseline_records_clip_predictions(tiny_clip_path, tmp_path, capsys):
    """`eval --baseline clip:MODEL` classifies with "a photo of a {}." and stores records like a diffusion run."""
    from diffusion_classifier.runs.engine import RunStore

    rng = np.random.default_rng(4)
    classes = ["cat", "dog", "fish"]
    files = []
    for c in classes:
        (tmp_path / "data" / c).mkdir(parents=True)
        for k in range(2):
            files.append(tmp_path / "data" / c / f"{k}.png")
            Image.fromarray(rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8)).save(files[-1])
    spec = f"clip:{tiny_clip_path}"
    argv = ["eval", "--dataset", f"folder:{tmp_path / 'data'}", "--baseline", spec, "--out", str(tmp_path / "run")]
    assert main([*argv, "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    records = RunStore(tmp_path / "run").records()
    assert len(records) == 6 and RunStore(tmp_path / "run").read_config().model == spec
    logits = clip_logits(tiny_clip_path, files, [f"a photo of a {c}." for c in classes])
    right = sum(int(logits[i].argmax()) == i // 2 for i in range(6))
    assert f"| 6/6 | {100 * right / 6:.1f} [" in table  # the summary table: images and top-1 %
    for i, rec in records.items():
        assert rec["label"] == classes[i // 2] and rec["calls"] == 0
        assert rec["prediction"] == classes[int(logits[i].argmax())]
        assert sum(r["probability"] for r in rec["ranking"]) == pytest.approx(1.0)
    assert main(["eval", "--dataset", f"folder:{tmp_path / 'data'}", "--out", str(tmp_path / "r2")]) == 2
    assert "--baseline" in capsys.readouterr().err

"""Winoground: pair scores against an independent SPEC.md §4 implementation, the score definitions, data, runs."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier.cli import main
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.matching.winoground import (
    PairScores,
    Scores,
    group_correct,
    image_correct,
    open_winoground,
    summarize,
    text_correct,
)
from diffusion_classifier.reporting.metrics import wilson_interval
from diffusion_classifier.runs.engine import RunStore, read_records

T_INTERVAL = 250  # 4 timesteps: 125, 375, 625, 875
EXAMPLES = [
    ("a dog on a red mat", "a red dog on a mat", "Object"),
    ("the cup holds the spoon", "the spoon holds the cup", "Relation"),
    ("big tree, small house", "small tree, big house", "Both"),
]
SIZES = [(20, 24), (30, 18), (16, 16), (17, 40), (24, 20), (40, 33)]


@pytest.fixture(scope="module")
def wino_dir(tmp_path_factory):
    """A Winoground copy in the release layout: 3 examples, random PNGs of assorted sizes."""
    root = tmp_path_factory.mktemp("winoground")
    (root / "images").mkdir()
    rng = np.random.default_rng(7)
    lines = []
    for i, (c0, c1, tag) in enumerate(EXAMPLES):
        for k in range(2):
            w, h = SIZES[2 * i + k]
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "images" / f"ex_{i}_img_{k}.png")
        row = {"id": i, "caption_0": c0, "caption_1": c1, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1"}
        row.update(tag="Adjective-Color", secondary_tag="", num_main_preds=1, collapsed_tag=tag)
        lines.append(json.dumps(row))
    (root / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def noise_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("noise") / "noise.npy"
    np.save(path, torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(42)).numpy())
    return path


# --- an independent implementation of SPEC.md §4 with diffusers / transformers components -------------


def ref_preprocess(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to size (bicubic, long side truncated), center crop, [-1, 1], (1, 3, s, s)."""
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.convert("RGB").resize(new, Image.Resampling.BICUBIC)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    img = img.crop((left, top, left + size, top + size))
    x = torch.tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1) / 255.0
    return (2 * x - 1)[None]


@torch.no_grad()
def reference_scores(sd_path, images, captions, noise, t_interval, normalize=False):
    """scores[k][j] = -mean_i mse(eps_i, unet(x_t_i, t_i, caption j)) for image k (minus the uncond. error)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(sd_path, subfolder="vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(sd_path / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(sd_path / "tokenizer")
    alpha_bar = DDPMScheduler.from_pretrained(sd_path, subfolder="scheduler").alphas_cumprod
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    prompts = list(captions) + [""]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    emb = text_encoder(ids.input_ids)[0]
    timesteps = list(range(t_interval // 2, 1000, t_interval))
    out = []
    for img in images:
        x0 = vae.encode(ref_preprocess(img, size)).latent_dist.mean * vae.config.scaling_factor
        errs = torch.zeros(len(prompts), len(timesteps), dtype=torch.float64)
        for i, t in enumerate(timesteps):
            eps = noise[i][None]
            x_t = alpha_bar[t].sqrt() * x0 + (1 - alpha_bar[t]).sqrt() * eps
            for j in range(len(prompts)):
                pred = unet(x_t, torch.tensor([t]), encoder_hidden_states=emb[j : j + 1]).sample
                errs[j, i] = ((pred - eps) ** 2).mean().item()
        if normalize:
            errs = errs - errs[-1]
        out.append((-errs[: len(captions)].mean(1)).tolist())
    return out


@functools.cache
def reference_pairs(sd_path, wino_dir, noise_file, normalize=False):
    noise = torch.from_numpy(np.load(noise_file))
    rows = [json.loads(line) for line in (wino_dir / "examples.jsonl").read_text().splitlines()]
    pairs = []
    for r in rows:
        imgs = [Image.open(wino_dir / "images" / f"{r[f'image_{k}']}.png") for k in range(2)]
        s = reference_scores(sd_path, imgs, [r["caption_0"], r["caption_1"]], noise, T_INTERVAL, normalize)
        pairs.append({"c0_i0": s[0][0], "c0_i1": s[1][0], "c1_i0": s[0][1], "c1_i1": s[1][1]})
    return rows, pairs


def ref_text(p):
    return p["c0_i0"] > p["c1_i0"] and p["c1_i1"] > p["c0_i1"]


def ref_image(p):
    return p["c0_i0"] > p["c0_i1"] and p["c1_i1"] > p["c1_i0"]


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def wino_argv(sd_path, wino_dir, noise_file, out=None, extra=()):
    argv = ["winoground", "--model", str(sd_path), "--data-dir", str(wino_dir), "--t-interval", str(T_INTERVAL)]
    argv += ["--noise-file", str(noise_file), "--device", "cpu", "--json", *extra]
    return argv + (["--out", str(out)] if out else [])


@pytest.mark.parametrize("normalize", [False, True])
def test_pair_scores_match_an_independent_implementation(tiny_sd_path, wino_dir, noise_file, capsys, normalize):
    got = run_json(capsys, wino_argv(tiny_sd_path, wino_dir, noise_file, extra=["--normalize"] if normalize else []))
    rows, want = reference_pairs(tiny_sd_path, wino_dir, noise_file, normalize)
    assert [e["id"] for e in got["examples"]] == [r["id"] for r in rows]
    for g, w in zip(got["examples"], want):
        for key in ("c0_i0", "c0_i1", "c1_i0", "c1_i1"):
            assert g[key] == pytest.approx(w[key], rel=1e-4)
    # the three scores follow from the pair scores, overall and by collapsed tag
    n = len(want)
    assert got["text_score"] == sum(map(ref_text, want)) / n
    assert got["image_score"] == sum(map(ref_image, want)) / n
    assert got["group_score"] == sum(ref_text(p) and ref_image(p) for p in want) / n
    assert list(got["by_tag"]) == ["Object", "Relation", "Both"]
    for r, p in zip(rows, want):
        tag = got["by_tag"][r["collapsed_tag"]]
        assert tag["n"] == 1 and tag["text_score"] == float(ref_text(p)) and tag["image_score"] == float(ref_image(p))
    k = round(got["text_score"] * n)
    assert got["text_interval"] == pytest.approx(list(wilson_interval(k, n)))


def test_normalizing_leaves_the_text_score_and_moves_the_image_scores(tiny_sd_path, wino_dir, noise_file):
    """Subtracting an image's unconditional error shifts both captions of that image alike."""
    _, plain = reference_pairs(tiny_sd_path, wino_dir, noise_file)
    _, norm = reference_pairs(tiny_sd_path, wino_dir, noise_file, normalize=True)
    for p, q in zip(plain, norm):
        assert p["c0_i0"] - p["c1_i0"] == pytest.approx(q["c0_i0"] - q["c1_i0"], abs=1e-6)
        assert p["c0_i0"] - p["c0_i1"] != pytest.approx(q["c0_i0"] - q["c0_i1"], abs=1e-6)


def test_run_directory_resumes_and_ignores_a_torn_line(tiny_sd_path, wino_dir, noise_file, tmp_path, capsys):
    out = tmp_path / "run"
    first = run_json(capsys, wino_argv(tiny_sd_path, wino_dir, noise_file, out))
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "winoground" and config["examples"] == 3 and config["t_interval"] == T_INTERVAL
    (records_file,) = out.glob("records-rank*.jsonl")
    lines = records_file.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    # a crash while writing the third record: two whole lines and a torn one
    records_file.write_bytes(b"".join(lines[:2]) + lines[2][:25])
    assert sorted(RunStore(out).records()) == [0, 1]
    again = run_json(capsys, wino_argv(tiny_sd_path, wino_dir, noise_file, out))
    for a, b in zip(again["examples"], first["examples"]):
        assert a == pytest.approx(b)
    after = records_file.read_bytes().splitlines(keepends=True)
    assert after[:2] == lines[:2] and len(after) == 3 and json.loads(after[2])["index"] == 2
    # finished: a rerun scores nothing and appends nothing
    run_json(capsys, wino_argv(tiny_sd_path, wino_dir, noise_file, out))
    assert records_file.read_bytes().splitlines(keepends=True) == after
    # `report` reads the run directory back to the same results
    report = run_json(capsys, ["report", str(out), "--json"])
    assert report.pop("run") == str(out) and report == again
    assert main(["report", str(out)]) == 0
    assert "| all | 3 |" in capsys.readouterr().out


def test_a_run_directory_refuses_other_settings(tiny_sd_path, wino_dir, noise_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(wino_argv(tiny_sd_path, wino_dir, noise_file, out, ["--limit", "1"])) == 0
    capsys.readouterr()
    assert main(wino_argv(tiny_sd_path, wino_dir, noise_file, out, ["--limit", "1", "--normalize"])) == 2
    assert "normalize" in capsys.readouterr().err


def test_score_definitions():
    right = PairScores(c0_i0=2, c0_i1=0, c1_i0=0, c1_i1=2)
    assert text_correct(right) and image_correct(right) and group_correct(right)
    # image 0 is likelier under every caption: captions still told apart, images not
    likely_image = PairScores(c0_i0=5, c0_i1=1, c1_i0=4, c1_i1=2)
    assert text_correct(likely_image) and not image_correct(likely_image) and not group_correct(likely_image)
    # caption 0 wins everywhere: images told apart, captions not
    likely_caption = PairScores(c0_i0=5, c0_i1=3, c1_i0=1, c1_i1=2)
    assert image_correct(likely_caption) and not text_correct(likely_caption)
    tie = PairScores(1, 1, 1, 1)  # ties are failures: "wins" is strict
    assert not text_correct(tie) and not image_correct(tie)
    s = Scores.of([right, likely_image, likely_caption, tie])
    assert (s.text.k, s.image.k, s.group.k, s.n) == (2, 2, 1, 4)
    assert s.to_dict()["group_interval"] == list(wilson_interval(1, 4))


def test_summarize_counts_failed_examples_apart():
    ok = {"c0_i0": 1.0, "c0_i1": 0.0, "c1_i0": 0.0, "c1_i1": 1.0}
    records = {
        0: {"index": 0, "id": 0, "collapsed_tag": "Relation", "status": "ok", "scores": {"m": ok}},
        1: {"index": 1, "id": 1, "collapsed_tag": "Object", "status": "failed", "error": "OSError"},
    }
    s = summarize(records, "m", expected=5)
    assert (s.overall.n, s.failed, s.expected) == (1, 1, 5)
    assert list(s.by_tag) == ["Relation"] and s.overall.group.value == 1.0
    assert math.isnan(summarize({}, "m").overall.text.value)


def test_release_layout_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        open_winoground(tmp_path / "absent")
    (tmp_path / "images").mkdir()
    (tmp_path / "examples.jsonl").write_text(json.dumps({"id": 0, "caption_0": "a"}) + "\n")
    with pytest.raises(UserInputError, match="lacks caption_1"):
        open_winoground(tmp_path)
    row = {"id": 0, "caption_0": "a", "caption_1": "b", "image_0": "x", "image_1": "y", "collapsed_tag": "Object"}
    (tmp_path / "examples.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UserInputError, match="image not found"):
        open_winoground(tmp_path)


def test_hub_layout_from_a_save_to_disk_folder(wino_dir, tmp_path):
    import datasets

    rows = [json.loads(line) for line in (wino_dir / "examples.jsonl").read_text().splitlines()]
    table = {k: [r[k] for r in rows] for k in rows[0] if not k.startswith("image_")}
    for k in ("image_0", "image_1"):
        table[k] = [str(wino_dir / "images" / f"{r[k]}.png") for r in rows]
    ds = (
        datasets.Dataset.from_dict(table)
        .cast_column("image_0", datasets.Image())
        .cast_column("image_1", datasets.Image())
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hf"))
    data = open_winoground(tmp_path / "hf")
    assert [e.caption_1 for e in data.examples] == [r["caption_1"] for r in rows]
    assert [e.collapsed_tag for e in data.examples] == ["Object", "Relation", "Both"]
    img0, img1 = data.images(1)
    assert img0.size == SIZES[2] and img1.size == SIZES[3]
    assert np.array_equal(np.asarray(img1), np.asarray(Image.open(wino_dir / "images" / "ex_1_img_1.png")))


def test_gated_hub_dataset_offline_is_a_clear_error(monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    assert main(["winoground", "--baseline", "clip:unused", "--json"]) == 2
    err = capsys.readouterr().err
    assert "gated" in err and "--data-dir" in err


def test_sharded_run_equals_one_process(tiny_sd_path, wino_dir, noise_file, tmp_path, monkeypatch, capsys):
    """Two shards (RANK 1, then RANK 0, as torchrun would set them) write disjoint record files; rank 0's
    summary covers every example and equals a single-process run's."""
    single = run_json(capsys, wino_argv(tiny_sd_path, wino_dir, noise_file))
    out = tmp_path / "run"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(wino_argv(tiny_sd_path, wino_dir, noise_file)) == 2  # a sharded run needs --out
    assert "--out" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    assert main(wino_argv(tiny_sd_path, wino_dir, noise_file, out)) == 0
    assert capsys.readouterr().out == ""  # only rank 0 reports
    monkeypatch.setenv("RANK", "0")
    sharded = run_json(capsys, wino_argv(tiny_sd_path, wino_dir, noise_file, out))
    files = {p.name: [json.loads(line)["index"] for line in p.read_text().splitlines()] for p in out.glob("records-*")}
    assert files == {"records-rank00000.jsonl": [0, 2], "records-rank00001.jsonl": [1]}
    for a, b in zip(sharded["examples"], single["examples"], strict=True):
        assert a == pytest.approx(b)
    assert {k: v for k, v in sharded.items() if k != "examples"} == {k: v for k, v in single.items() if k != "examples"}


def test_a_failed_example_exits_1_and_is_scored_once_fixed(tiny_sd_path, wino_dir, noise_file, tmp_path, capsys):
    import shutil

    data = tmp_path / "wino"
    shutil.copytree(wino_dir, data)
    broken = data / "images" / "ex_1_img_0.png"
    good = broken.read_bytes()
    broken.write_bytes(b"not a png")
    out = tmp_path / "run"
    assert main(wino_argv(tiny_sd_path, data, noise_file, out)) == 1  # one failed, the rest scored
    assert json.loads(capsys.readouterr().out)["failed"] == 1
    broken.write_bytes(good)
    assert main(wino_argv(tiny_sd_path, data, noise_file, out)) == 0  # resumed: only example 1 again
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] == 0 and result["n"] == 3
    ok = [r["index"] for r in read_records(next(out.glob("records-rank*.jsonl"))) if r["status"] == "ok"]
    assert sorted(ok) == [0, 1, 2]

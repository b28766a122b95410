"""`classify` on a tiny SD pipeline: exact errors against an independent implementation, JSON, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier import DiffusionClassifier, Full
from diffusion_classifier.cli import main
from tiny_models import LABELS


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def independent_errors(folder, image_path, prompts, timesteps, noise) -> np.ndarray:
    """SPEC.md §1-2 written out directly with diffusers/transformers components: errors[prompt, trial]."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    alphas = DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)

    img = Image.open(image_path).convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((size, int(h * scale)) if w <= h else (int(w * scale), size), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = round((w - size) / 2), round((h - size) / 2)
    img = img.crop((left, top, left + size, top + size))
    x = torch.tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        latent = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        emb = text_encoder(ids)[0]
        out = np.zeros((len(prompts), len(timesteps)))
        for i, t in enumerate(timesteps):
            eps = noise[i : i + 1]
            x_t = latent * alphas[t] ** 0.5 + eps * (1 - alphas[t]) ** 0.5
            for k in range(len(prompts)):
                pred = unet(x_t, torch.tensor([t]), encoder_hidden_states=emb[k : k + 1]).sample
                out[k, i] = ((eps - pred) ** 2).mean().item()
    return out


def test_classify_json_matches_an_independent_implementation(tiny_sd_path, image_files, tmp_path, capsys):
    timesteps = [11, 311, 611, 911]
    noise = torch.randn(len(timesteps), 4, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.save(noise, tmp_path / "noise.pt")
    code, out, _ = run_cli(
        capsys, "classify", image_files[0], "--model", tiny_sd_path, "--labels", *LABELS,
        "--timesteps", ",".join(map(str, timesteps)), "--noise-file", tmp_path / "noise.pt", "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    expected = independent_errors(
        tiny_sd_path, image_files[0], [f"a photo of a {x}." for x in LABELS], timesteps, noise
    )
    for k, label in enumerate(LABELS):
        assert result["errors"][label]["timesteps"] == timesteps
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k], rtol=1e-4)
    assert result["prediction"] == LABELS[int(expected.mean(1).argmin())]
    assert [s["label"] for s in result["scores"]][0] == result["prediction"]
    scores = [s["score"] for s in result["scores"]]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores[0], -expected.mean(1).min(), rtol=1e-5)
    assert result["calls"] == len(LABELS) * len(timesteps)
    assert result["image"] == str(image_files[0]) and result["seconds"] > 0


def test_cifar10_schedule_costs_2750_calls_and_a_seed_reproduces_it(tiny_sd_path, image_files, capsys):
    labels = [str(i) for i in range(10)]
    args = ["classify", image_files[1], "--model", tiny_sd_path, "--labels", *labels, "--schedule", "cifar10"]
    runs = []
    for _ in range(2):
        code, out, _ = run_cli(capsys, *args, "--seed", "3", "--batch-size", "250", "--json")
        assert code == 0
        runs.append(json.loads(out))
    assert runs[0]["calls"] == 2750
    assert runs[0]["errors"]["0"]["timesteps"][:3] == [11, 31, 51]
    for r in runs:
        r.pop("seconds")
    assert runs[0] == runs[1]
    survivors = {k: np.mean(v["values"]) for k, v in runs[0]["errors"].items() if len(v["values"]) == 500}
    assert len(survivors) == 5 and runs[0]["prediction"] == min(survivors, key=survivors.get)


def test_batch_size_does_not_change_errors(tiny_sd_path, image_files):
    clf = DiffusionClassifier.from_pretrained(tiny_sd_path)
    sched = Full(tuple(range(5, 1000, 100)))
    a = clf(image_files[2], labels=LABELS, schedule=sched, seed=1, batch_size=1)
    b = clf(image_files[2], labels=LABELS, schedule=sched, seed=1, batch_size=64)
    for label in LABELS:
        np.testing.assert_allclose(a.errors[label]["values"], b.errors[label]["values"], rtol=1e-5)
    assert a.prediction == b.prediction


def test_prompts_file_with_several_prompts_per_class(tiny_sd_path, image_files, tmp_path):
    csv = tmp_path / "prompts.csv"
    csv.write_text('prompt,classname,classidx\n"a cat.",cat,0\n"a photo of a cat.",cat,0\n"a dog.",dog,1\n')
    from diffusion_classifier.data.prompts import read_prompts_csv

    result = DiffusionClassifier.from_pretrained(tiny_sd_path)(
        image_files[0], prompts=read_prompts_csv(csv), schedule=Full((100, 500, 900)), seed=0
    )
    assert set(result.errors) == {"a cat.", "a photo of a cat.", "a dog."}
    best_prompt = min(result.errors, key=lambda k: np.mean(result.errors[k]["values"]))
    assert result.prediction == {"a cat.": "cat", "a photo of a cat.": "cat", "a dog.": "dog"}[best_prompt]
    assert [s["label"] for s in result.scores] == [result.prediction, "dog" if result.prediction == "cat" else "cat"]


def test_table_output(tiny_sd_path, image_files, capsys):
    """The table shows what --json says: the prediction and calls, then the top labels ranked with their scores."""
    args = ["classify", image_files[0], "--model", tiny_sd_path, "--labels", *LABELS, "--timesteps", "500,900"]
    code, out, _ = run_cli(capsys, *args, "--top", "2")
    assert code == 0
    result = json.loads(run_cli(capsys, *args, "--json")[1])
    head, *rows = out.splitlines()
    assert head.startswith(f"{image_files[0]}: {result['prediction']}  (6 calls, ")
    assert [row.split()[:3] for row in rows] == [
        [f"{rank}.", s["label"], f"{s['score']:.6f}"] for rank, s in enumerate(result["scores"][:2], start=1)
    ]


BAD_INPUT = [
    (["missing.png"], ["--labels", "a", "b"], "image not found"),
    (["{bad}"], ["--labels", "a", "b"], "cannot read image"),
    (["{img}"], ["--labels", "a", "a"], "duplicate label"),
    (["{img}"], ["--labels", ""], "empty label"),
    (["{img}"], [], "no labels given"),
    (["{img}"], ["--labels", "a", "b", "--template", "a photo"], "has no '{}'"),
    (["{img}"], ["--labels", "a", "b", "--schedule", "cifar11"], "unknown schedule"),
    (["{img}"], ["--labels", "a", "b", "--timesteps", "0:5000:100"], "outside the model's range"),
    (["{img}"], ["--labels", "a", "b", "--noise-file", "nope.pt"], "noise file not found"),
]


@pytest.mark.parametrize("images,extra,message", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(tiny_sd_path, image_files, tmp_path, capsys, images, extra, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    images = [x.format(img=image_files[0], bad=bad) for x in images]
    schedule = [] if {"--schedule", "--timesteps"} & set(extra) else ["--timesteps", "500"]
    code, out, err = run_cli(capsys, "classify", *images, "--model", tiny_sd_path, *extra, *schedule)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "model,message",
    [("no/such/folder/x", "model folder not found"), ("{empty}", "no supported model"), ("{partial}", "lacks")],
)
def test_bad_model_paths(tmp_path, image_files, capsys, model, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    (tmp_path / "partial" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    code, _, err = run_cli(capsys, "classify", image_files[0], "--labels", "a", "b",
                           "--model", model.format(empty=tmp_path / "empty", partial=tmp_path / "partial"))  # fmt: skip
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_uncached_hub_id_offline(image_files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = run_cli(capsys, "classify", image_files[0], "--labels", "a", "b", "--model", "someone/not-cached")
    assert code == 2 and "not in the local cache" in err


def test_one_bad_image_among_several_exits_1_and_classifies_the_rest(tiny_sd_path, image_files, capsys):
    code, out, err = run_cli(capsys, "classify", image_files[0], "missing.png", image_files[1], "--model", tiny_sd_path,
                             "--labels", "a", "b", "--timesteps", "500", "--json")  # fmt: skip
    assert code == 1
    assert [json.loads(line)["image"] for line in out.splitlines()] == [str(image_files[0]), str(image_files[1])]
    assert "missing.png" in err and "Traceback" not in err


def test_two_images_in_one_command_have_the_errors_of_each_alone(tiny_sd_path, image_files, capsys):
    """The packer shares model calls between the images (batch 4 splits each image's 9 rows across calls);
    each image's errors are still those of classifying it alone, and the lines come in the input order."""
    args = ["--model", tiny_sd_path, "--labels", *LABELS, "--timesteps", "100,500,900", "--batch-size", "4", "--json"]
    code, out, _ = run_cli(capsys, "classify", image_files[1], image_files[0], *args)
    assert code == 0
    together = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in together] == [str(image_files[1]), str(image_files[0])]
    for result, image in zip(together, [image_files[1], image_files[0]]):
        code, out, _ = run_cli(capsys, "classify", image, *args)
        alone = json.loads(out)
        assert code == 0 and result["prediction"] == alone["prediction"]
        for label in LABELS:
            np.testing.assert_allclose(result["errors"][label]["values"], alone["errors"][label]["values"], rtol=1e-6)


def test_console_entry_point_runs_as_a_module(tiny_sd_path, image_files):
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_classifier", "classify", str(image_files[0]), "--model", str(tiny_sd_path),
         "--labels", "a", "a"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "duplicate label" in proc.stderr and "Traceback" not in proc.stderr

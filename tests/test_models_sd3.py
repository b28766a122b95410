"""SD3: the CLI's errors equal the rectified-flow protocol written straight from diffusers (encode_prompt, VAE
shift and scale, sigma = (t + 1) / 1000, the transformer's v), with and without T5, eps and velocity errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_classifier import DiffusionClassifier, Full, Staged, count_calls
from diffusion_classifier.cli import main
from diffusion_classifier.models import FAMILIES
from tiny_models import build_tiny_sd3, reference_pixels

LABELS = ["cat", "dog", "car"]
PROMPTS = [f"a photo of a {x}." for x in LABELS]


@pytest.fixture(scope="module")
def sd3_path(tmp_path_factory):
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3") / "pipe", seed=8128)


def independent_errors(folder, image_path, prompts, trials, noise, t5=True, velocity=False, loss="l2") -> np.ndarray:
    """The SD3 protocol from diffusers' own parts: errors[prompt, trial] for trials (t, noise index)."""
    from diffusers import StableDiffusion3Pipeline

    drop = {} if t5 else {"text_encoder_3": None, "tokenizer_3": None}
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, **drop)
    size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    cfg = pipe.vae.config
    with torch.no_grad():
        mean = pipe.vae.encode(reference_pixels(image_path, size)).latent_dist.mean
        x0 = (mean - cfg.shift_factor) * cfg.scaling_factor
        emb, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)  # fmt: skip
        out = np.zeros((len(prompts), len(trials)))
        for i, (t, j) in enumerate(trials):
            eps, sigma = noise[j : j + 1], (t + 1) / 1000
            x_t = (1 - sigma) * x0 + sigma * eps
            for k in range(len(prompts)):
                v = pipe.transformer(x_t, encoder_hidden_states=emb[k : k + 1], pooled_projections=pooled[k : k + 1],
                                     timestep=torch.tensor([sigma * 1000])).sample  # fmt: skip
                target, pred = (eps - x0, v) if velocity else (eps, x_t + (1 - sigma) * v)
                diff = pred - target
                out[k, i] = (diff**2 if loss == "l2" else diff.abs()).mean().item()
    return out


def classify_json(capsys, *args) -> dict:
    code = main(["classify", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize(
    "extra,t5,velocity,loss",
    [
        ([], True, False, "l2"),
        (["--no-t5"], False, False, "l2"),
        (["--flow-error", "velocity", "--loss", "l1"], True, True, "l1"),
    ],
)
def test_sd3_cli_errors_equal_the_diffusers_protocol(
    sd3_path, image_files, tmp_path, capsys, extra, t5, velocity, loss
):
    timesteps = [0, 249, 600, 998]
    noise = torch.randn(len(timesteps), 4, 8, 8, generator=torch.Generator().manual_seed(77))
    torch.save(noise, tmp_path / "noise.pt")
    steps = ",".join(map(str, timesteps))
    result = classify_json(capsys, image_files[0], "--model", sd3_path, "--labels", *LABELS, *extra,
                           "--timesteps", steps, "--noise-file", tmp_path / "noise.pt")  # fmt: skip
    trials = list(zip(timesteps, range(4)))
    expected = independent_errors(sd3_path, image_files[0], PROMPTS, trials, noise, t5, velocity, loss)
    for k, label in enumerate(LABELS):
        assert result["errors"][label]["timesteps"] == timesteps
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k], rtol=1e-4)
    assert result["prediction"] == LABELS[int(expected.mean(1).argmin())]
    assert result["calls"] == len(LABELS) * len(timesteps)


def test_sd3_staged_survivors_prediction_and_call_count(sd3_path, image_files, tmp_path, capsys):
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(78))
    torch.save(noise, tmp_path / "noise.pt")
    result = classify_json(capsys, image_files[1], "--model", sd3_path, "--labels", *LABELS, "--to-keep", "2", "1",
                           "--n-samples", "2", "4", "--noise-file", tmp_path / "noise.pt")  # fmt: skip
    trials = [(375, 0), (875, 1), (125, 2), (625, 3)]  # stage 1: 375, 875; stage 2 adds 125, 625
    expected = independent_errors(sd3_path, image_files[1], PROMPTS, trials, noise)
    survivors = sorted(np.argsort(expected[:, :2].mean(1), kind="stable")[:2])
    assert result["calls"] == count_calls(Staged((2, 4), (2, 1)), 3) == 10
    for k, label in enumerate(LABELS):
        n = 4 if k in survivors else 2
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k, :n], rtol=1e-4)
    assert result["prediction"] == LABELS[min(survivors, key=lambda k: expected[k].mean())]


def test_a_folder_without_t5_equals_no_t5(sd3_path, image_files, tmp_path):
    bare = build_tiny_sd3(tmp_path / "no-t5", seed=8128, t5=False)  # the same seed: the same other weights
    a = DiffusionClassifier.from_pretrained(bare, device="cpu")
    b = DiffusionClassifier.from_pretrained(sd3_path, device="cpu", no_t5=True)
    assert FAMILIES["sd3"].detect(bare) and not FAMILIES["stable-diffusion"].detect(bare)
    assert a.model.describe()["t5"] is False and b.model.describe()["t5"] is False
    sched = Full((100, 500))
    ra, rb = (m(image_files[0], labels=["cat", "dog"], schedule=sched, seed=4) for m in (a, b))
    assert ra.errors == rb.errors
    c = DiffusionClassifier.from_pretrained(sd3_path, device="cpu")
    assert c.model.describe()["t5"] is True and c.model.describe()["parameterization"] == "flow"
    assert c(image_files[0], labels=["cat", "dog"], schedule=sched, seed=4).errors != ra.errors


def test_sd3_rejects_sd_only_options(sd3_path, image_files, capsys):
    code = main(["classify", str(image_files[0]), "--model", str(sd3_path), "--labels", "a", "b", "--unet", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "--unet applies to stable-diffusion, sdxl models only, not sd3 ones" in err

"""SDXL: the CLI's errors equal the protocol written straight from diffusers (encode_prompt, VAE, UNet, time_ids)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_classifier import DiffusionClassifier, Full, Staged, count_calls
from diffusion_classifier.cli import main
from diffusion_classifier.models import FAMILIES, load_adapter
from tiny_models import build_tiny_sdxl, reference_pixels

LABELS = ["cat", "dog", "car"]
PROMPTS = [f"a photo of a {x}." for x in LABELS]


@pytest.fixture(scope="module")
def sdxl_path(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "pipe", seed=20260417)


def independent_errors(folder, image_path, prompts, trials, noise) -> np.ndarray:
    """The SDXL protocol from diffusers' own parts: errors[prompt, trial] for trials (t, noise index)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    alphas = pipe.scheduler.alphas_cumprod
    with torch.no_grad():
        x0 = pipe.vae.encode(reference_pixels(image_path, size)).latent_dist.mean * pipe.vae.config.scaling_factor
        emb, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)  # fmt: skip
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        out = np.zeros((len(prompts), len(trials)))
        for i, (t, j) in enumerate(trials):
            eps = noise[j : j + 1]
            x_t = alphas[t] ** 0.5 * x0 + (1 - alphas[t]) ** 0.5 * eps
            for k in range(len(prompts)):
                added = {"text_embeds": pooled[k : k + 1], "time_ids": time_ids}
                pred = pipe.unet(x_t, torch.tensor([t]), encoder_hidden_states=emb[k : k + 1],
                                 added_cond_kwargs=added).sample  # fmt: skip
                out[k, i] = ((eps - pred) ** 2).mean().item()
    return out


def classify_json(capsys, *args) -> dict:
    code = main(["classify", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_sdxl_cli_errors_equal_the_diffusers_protocol(sdxl_path, image_files, tmp_path, capsys):
    timesteps = [11, 311, 611, 911]
    noise = torch.randn(len(timesteps), 4, 8, 8, generator=torch.Generator().manual_seed(91))
    torch.save(noise, tmp_path / "noise.pt")
    steps = ",".join(map(str, timesteps))
    result = classify_json(capsys, image_files[0], "--model", sdxl_path, "--labels", *LABELS,
                           "--timesteps", steps, "--noise-file", tmp_path / "noise.pt")  # fmt: skip
    expected = independent_errors(sdxl_path, image_files[0], PROMPTS, list(zip(timesteps, range(4))), noise)
    for k, label in enumerate(LABELS):
        assert result["errors"][label]["timesteps"] == timesteps
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k], rtol=1e-4)
    assert result["prediction"] == LABELS[int(expected.mean(1).argmin())]
    assert result["calls"] == len(LABELS) * len(timesteps)


def test_sdxl_staged_survivors_prediction_and_call_count(sdxl_path, image_files, tmp_path, capsys):
    # n_samples 2 4: master grid 125, 375, 625, 875; stage 1 evaluates 375, 875 (noise 0, 1), stage 2 adds 125, 625
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(92))
    torch.save(noise, tmp_path / "noise.pt")
    result = classify_json(capsys, image_files[1], "--model", sdxl_path, "--labels", *LABELS, "--to-keep", "2", "1",
                           "--n-samples", "2", "4", "--noise-file", tmp_path / "noise.pt")  # fmt: skip
    trials = [(375, 0), (875, 1), (125, 2), (625, 3)]
    expected = independent_errors(sdxl_path, image_files[1], PROMPTS, trials, noise)
    survivors = sorted(np.argsort(expected[:, :2].mean(1), kind="stable")[:2])
    assert result["calls"] == count_calls(Staged((2, 4), (2, 1)), 3) == 3 * 2 + 2 * 2
    for k, label in enumerate(LABELS):
        n = 4 if k in survivors else 2
        assert result["errors"][label]["timesteps"] == [t for t, _ in trials[:n]]
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k, :n], rtol=1e-4)
    assert result["prediction"] == LABELS[min(survivors, key=lambda k: expected[k].mean())]


def test_sdxl_family_time_ids_and_a_float32_vae(sdxl_path):
    model = load_adapter(str(sdxl_path), dtype="bfloat16", device="cpu", image_size=32)
    assert type(model).__name__ == "StableDiffusionXLModel" and FAMILIES["sdxl"].detect(sdxl_path)
    assert not FAMILIES["stable-diffusion"].detect(sdxl_path)
    assert model.unet.dtype == torch.bfloat16 and model.vae.dtype == torch.float32
    assert model.latent_shape == (4, 16, 16) and model.time_ids.tolist() == [32, 32, 0, 0, 32, 32]
    rows = model.condition(["a cat", "a dog"])
    assert rows.shape == (2, 77 + 1, 64)  # 77 tokens of 32 + 32 features, then one row holding the 32-d pooled


def test_sdxl_default_size_and_predictions_in_python(sdxl_path, image_files):
    clf = DiffusionClassifier.from_pretrained(sdxl_path, device="cpu")
    assert clf.model.image_size == 16 and clf.model.describe()["adapter"] == "StableDiffusionXLModel"
    r = clf(image_files[1], labels=["cat", "dog"], schedule=Full((250, 750)), seed=3)
    assert r.calls == 4 and r.prediction == min(r.errors, key=lambda k: sum(r.errors[k]["values"]))

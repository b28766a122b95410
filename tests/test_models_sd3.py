"""SD3: the rectified-flow protocol written straight from diffusers (encode_prompt, VAE shift and scale, sigma =
(t + 1) / 1000, the transformer's v), with and without T5, eps and velocity errors, which the CLI's errors equal
(test_models_conformance); and what only SD3 has: T5 left out, SD-only options refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_classifier import DiffusionClassifier, Full
from diffusion_classifier.cli import main
from diffusion_classifier.models import FAMILIES
from tiny_models import build_tiny_sd3, reference_pixels


@pytest.fixture(scope="module")
def sd3_path(tiny_pipeline):
    return tiny_pipeline("sd3")


def independent_errors(folder, image_path, prompts, timesteps, noise, t5=True, velocity=False, loss="l2") -> np.ndarray:
    """The SD3 protocol from diffusers' own parts: errors[prompt, trial], trial i at timesteps[i] with noise[i]."""
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
        out = np.zeros((len(prompts), len(timesteps)))
        for i, t in enumerate(timesteps):
            eps, sigma = noise[i : i + 1], (t + 1) / 1000
            x_t = (1 - sigma) * x0 + sigma * eps
            for k in range(len(prompts)):
                v = pipe.transformer(x_t, encoder_hidden_states=emb[k : k + 1], pooled_projections=pooled[k : k + 1],
                                     timestep=torch.tensor([sigma * 1000])).sample  # fmt: skip
                target, pred = (eps - x0, v) if velocity else (eps, x_t + (1 - sigma) * v)
                diff = pred - target
                out[k, i] = (diff**2 if loss == "l2" else diff.abs()).mean().item()
    return out


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

"""SDXL: the protocol written straight from diffusers (encode_prompt, VAE, UNet, time_ids), which the CLI's errors
equal (test_models_conformance), and what only SDXL has: the size time_ids and a float32 VAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.models import FAMILIES, load_adapter
from tiny_models import reference_pixels


@pytest.fixture(scope="module")
def sdxl_path(tiny_pipeline):
    return tiny_pipeline("sdxl")


def independent_errors(folder, image_path, prompts, timesteps, noise) -> np.ndarray:
    """The SDXL protocol from diffusers' own parts: errors[prompt, trial], trial i at timesteps[i] with noise[i]."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    alphas = pipe.scheduler.alphas_cumprod
    with torch.no_grad():
        x0 = pipe.vae.encode(reference_pixels(image_path, size)).latent_dist.mean * pipe.vae.config.scaling_factor
        emb, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)  # fmt: skip
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        out = np.zeros((len(prompts), len(timesteps)))
        for i, t in enumerate(timesteps):
            eps = noise[i : i + 1]
            x_t = alphas[t] ** 0.5 * x0 + (1 - alphas[t]) ** 0.5 * eps
            for k in range(len(prompts)):
                added = {"text_embeds": pooled[k : k + 1], "time_ids": time_ids}
                pred = pipe.unet(x_t, torch.tensor([t]), encoder_hidden_states=emb[k : k + 1],
                                 added_cond_kwargs=added).sample  # fmt: skip
                out[k, i] = ((eps - pred) ** 2).mean().item()
    return out


def test_sdxl_family_time_ids_and_a_float32_vae(sdxl_path):
    model = load_adapter(str(sdxl_path), dtype="bfloat16", device="cpu", image_size=32)
    assert type(model).__name__ == "StableDiffusionXLModel" and FAMILIES["sdxl"].detect(sdxl_path)
    assert not FAMILIES["stable-diffusion"].detect(sdxl_path)
    assert model.unet.dtype == torch.bfloat16 and model.vae.dtype == torch.float32
    assert model.latent_shape == (4, 16, 16) and model.time_ids.tolist() == [32, 32, 0, 0, 32, 32]
    rows = model.condition(["a cat", "a dog"])
    assert rows.shape == (2, 77 + 1, 64)  # 77 tokens of 32 + 32 features, then one row holding the 32-d pooled


def test_sdxl_default_size_in_python(sdxl_path):
    clf = DiffusionClassifier.from_pretrained(sdxl_path, device="cpu")
    assert clf.model.image_size == 16 and clf.model.describe()["adapter"] == "StableDiffusionXLModel"

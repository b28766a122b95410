"""PixArt-alpha / Sigma: the DDPM protocol written straight from diffusers (encode_prompt's T5 embeddings and mask,
VAE mean x scale, the scheduler's alpha_bar, micro-conditions, the eps half), which the CLI's errors equal
(test_models_conformance); and what only PixArt has: the mask rows, the swapped transformer, no LoRA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.cli import main
from diffusion_classifier.models import FAMILIES, load_adapter
from tiny_models import LABELS, PROMPTS, build_tiny_pixart, classify_json, reference_pixels


@pytest.fixture(scope="module")
def alpha_path(tiny_pipeline):
    """PixArt-alpha with resolution / aspect-ratio micro-conditions (as the 1024 px model has)."""
    return tiny_pipeline("pixart-alpha")


@pytest.fixture(scope="module")
def sigma_path(tiny_pipeline):
    return tiny_pipeline("pixart-sigma")


def independent_errors(folder, image_path, prompts, timesteps, noise, size=None, transformer=None) -> np.ndarray:
    """The PixArt protocol from diffusers' own parts: errors[prompt, trial] (l2), trial i at timesteps[i] with
    noise[i]."""
    import diffusers

    cls_name = json.loads((folder / "model_index.json").read_text())["_class_name"]
    extra = {} if transformer is None else {"transformer": transformer}
    pipe = getattr(diffusers, cls_name).from_pretrained(folder, **extra)
    net = pipe.transformer
    size = size or net.config.sample_size * pipe.vae_scale_factor
    alphas = pipe.scheduler.alphas_cumprod
    with torch.no_grad():
        x0 = pipe.vae.encode(reference_pixels(image_path, size)).latent_dist.mean * pipe.vae.config.scaling_factor
        emb, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, num_images_per_prompt=1,
                                             device="cpu", clean_caption=False)  # fmt: skip
        added = {"resolution": None, "aspect_ratio": None}
        if net.config.use_additional_conditions:  # PixArtAlphaPipeline's micro-conditions for (size, size)
            added = {"resolution": torch.tensor([[size, size]]).float(), "aspect_ratio": torch.tensor([[1.0]])}
        out = np.zeros((len(prompts), len(timesteps)))
        for i, t in enumerate(timesteps):
            eps = noise[i : i + 1]
            x_t = alphas[t] ** 0.5 * x0 + (1 - alphas[t]) ** 0.5 * eps
            for k in range(len(prompts)):
                pred = net(x_t, encoder_hidden_states=emb[k : k + 1], encoder_attention_mask=mask[k : k + 1],
                           timestep=torch.tensor([t]), added_cond_kwargs=added).sample  # fmt: skip
                pred = pred.chunk(2, dim=1)[0]  # learned sigma: the eps half
                out[k, i] = ((eps - pred) ** 2).mean().item()
    return out


def test_pixart_transformer_option_swaps_the_denoiser(alpha_path, image_files, tmp_path, capsys):
    from diffusers import PixArtTransformer2DModel

    other = build_tiny_pixart(tmp_path / "other", seed=99)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(63))
    torch.save(noise, tmp_path / "noise.pt")
    result = classify_json(capsys, image_files[2], "--model", alpha_path, "--labels", *LABELS, "--transformer", other,
                           "--timesteps", "100,700", "--noise-file", tmp_path / "noise.pt")  # fmt: skip
    swapped = PixArtTransformer2DModel.from_pretrained(other, subfolder="transformer")
    expected = independent_errors(alpha_path, image_files[2], PROMPTS, [100, 700], noise, transformer=swapped)
    for k, label in enumerate(LABELS):
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k], rtol=1e-4)
    model = load_adapter(str(alpha_path), device="cpu", transformer=str(other))
    assert model.describe()["transformer"] == str(other)


def test_pixart_family_rows_and_a_float32_vae(alpha_path, sigma_path):
    assert FAMILIES["pixart"].detect(alpha_path) and FAMILIES["pixart"].detect(sigma_path)
    assert not any(FAMILIES[f].detect(alpha_path) for f in ("stable-diffusion", "sdxl", "sd3", "dit"))
    model = load_adapter(str(sigma_path), dtype="bfloat16", device="cpu")
    assert type(model).__name__ == "PixArtModel" and model.vae.dtype == torch.float32
    assert model.transformer.dtype == torch.bfloat16 and model.latent_shape == (4, 8, 8)
    prompts = ["a cat", "a much longer prompt"]
    rows = model.condition(prompts)
    assert rows.shape == (2, 300 + 10, 32)  # Sigma's 300 T5 tokens of 32, then the mask in ceil(300 / 32) rows
    tokens = model.pipe.tokenizer(prompts, padding="max_length", max_length=300, return_tensors="pt")
    assert rows[:, 300:].flatten(1)[:, :300].tolist() == tokens.attention_mask.tolist()
    assert 0 < tokens.attention_mask[0].sum() < tokens.attention_mask[1].sum() < 300
    alpha = load_adapter(str(alpha_path), device="cpu")
    assert alpha.describe()["text_length"] == 120 and alpha.describe()["pipeline"] == "PixArtAlphaPipeline"


def test_pixart_defaults_in_python_and_rejected_options(alpha_path, image_files, capsys):
    clf = DiffusionClassifier.from_pretrained(alpha_path, device="cpu")
    assert clf.model.image_size == 16 and clf.model.describe()["prediction_type"] == "epsilon"
    args = ["classify", str(image_files[0]), "--model", str(alpha_path), "--labels", "a", "b"]
    assert main([*args, "--lora", "x"]) == 2 and "--lora applies to" in capsys.readouterr().err
    code = main([*args, "--image-size", "18"])
    assert code == 2 and "multiple of 4" in capsys.readouterr().err

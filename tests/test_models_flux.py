"""FLUX.1: the rectified-flow protocol written out from diffusers' parts (encode_prompt, VAE shift and scale, sigma =
(t + 1) / 1000, 2 x 2 packing and latent ids by hand, dev's guidance at 1.0, the v), which the CLI's errors equal
(test_models_conformance); and what only FLUX has: its rows, ids and defaults, LoRA on every loaded module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.cli import main
from diffusion_classifier.models import FAMILIES, load_adapter
from tiny_models import reference_pixels

SIZE = 16  # 8 x 8 latents, 16 packed tokens: the tiny pipeline's default (128 x 2 px) would be slow


@pytest.fixture(scope="module")
def schnell_path(tiny_pipeline):
    return tiny_pipeline("flux-schnell")


@pytest.fixture(scope="module")
def dev_path(tiny_pipeline):
    return tiny_pipeline("flux-dev")


def pack(x: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) -> (1, h/2 * w/2, 4C): one token per 2 x 2 patch, row-major, features (c, dy, dx)."""
    _, C, h, w = x.shape
    return x.view(1, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, h * w // 4, 4 * C)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    C = tokens.shape[-1] // 4
    return tokens.view(1, h // 2, w // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, C, h, w)


def independent_errors(folder, image_path, prompts, timesteps, noise, velocity=False, loss="l2") -> np.ndarray:
    """The FLUX protocol from diffusers' own parts at SIZE px: errors[prompt, trial], trial i at timesteps[i] with
    noise[i]."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    net, cfg = pipe.transformer, pipe.vae.config
    length = 512 if net.config.guidance_embeds else 256  # dev / schnell, as Black Forest Labs' code
    with torch.no_grad():
        mean = pipe.vae.encode(reference_pixels(image_path, SIZE)).latent_dist.mean
        x0 = (mean - cfg.shift_factor) * cfg.scaling_factor
        emb, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, device="cpu", num_images_per_prompt=1,
                                            max_sequence_length=length)  # fmt: skip
        h, w = x0.shape[-2:]
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
        guidance = torch.tensor([1.0]) if net.config.guidance_embeds else None
        out = np.zeros((len(prompts), len(timesteps)))
        for i, t in enumerate(timesteps):
            eps, sigma = noise[i : i + 1], (t + 1) / 1000
            x_t = (1 - sigma) * x0 + sigma * eps
            for k in range(len(prompts)):
                v = net(pack(x_t), timestep=torch.tensor([sigma]), guidance=guidance, img_ids=img_ids,
                        pooled_projections=pooled[k : k + 1], encoder_hidden_states=emb[k : k + 1],
                        txt_ids=torch.zeros(length, 3)).sample  # fmt: skip
                v = unpack(v, h, w)
                target, pred = (eps - x0, v) if velocity else (eps, x_t + (1 - sigma) * v)
                diff = pred - target
                out[k, i] = (diff**2 if loss == "l2" else diff.abs()).mean().item()
    return out


def test_flux_lora_equals_the_lora_fused_by_diffusers(schnell_path, image_files, tmp_path, capsys):
    from diffusers import FluxPipeline

    from test_lora import assert_errors_close, assert_errors_differ, errors_json, save_random_lora

    lora = save_random_lora(FluxPipeline, schnell_path, tmp_path / "lora", seed=5, denoiser="transformer")
    pipe = FluxPipeline.from_pretrained(schnell_path)  # diffusers fuses the transformer's and the CLIP encoder's
    pipe.load_lora_weights(lora)
    pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=0.7)
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / "fused", safe_serialization=True)

    def errors(model, *extra):
        return errors_json(capsys, image_files[0], model, "--image-size", SIZE, *extra)

    ours = errors(schnell_path, "--lora", lora, "--lora-scale", "0.7")
    assert_errors_close(ours, errors(tmp_path / "fused"))
    assert_errors_differ(ours, errors(schnell_path))


def test_flux_family_rows_ids_and_defaults(schnell_path, dev_path):
    assert FAMILIES["flux"].detect(schnell_path) and not FAMILIES["sd3"].detect(schnell_path)
    schnell = load_adapter(str(schnell_path), dtype="bfloat16", device="cpu")
    assert type(schnell).__name__ == "FluxModel" and schnell.vae.dtype == torch.float32
    assert schnell.transformer.dtype == torch.bfloat16
    assert schnell.image_size == 128 * 2 and schnell.latent_shape == (4, 128, 128)  # FluxPipeline's default size
    assert schnell.describe()["guidance"] is None and schnell.forward_process.parameterization == "flow"
    assert schnell.condition(["a cat"]).shape == (1, 256 + 1, 32)  # 256 T5 tokens of 32, then the 16-d pooled
    dev = load_adapter(str(dev_path), device="cpu", image_size=32)
    assert dev.describe()["guidance"] == 1.0 and dev.latent_shape == (4, 16, 16)
    assert dev.condition(["a cat", "a dog"]).shape == (2, 512 + 1, 32)


def test_flux_options_in_python_and_rejected_options(dev_path, image_files, capsys):
    clf = DiffusionClassifier.from_pretrained(dev_path, device="cpu", image_size=SIZE, flow_error="velocity")
    assert clf.model.describe()["flow_error"] == "velocity"
    args = ["classify", str(image_files[0]), "--model", str(dev_path), "--labels", "a", "b"]
    assert main([*args, "--no-t5"]) == 2 and "--no-t5 applies to sd3 models only" in capsys.readouterr().err
    assert main([*args, "--image-size", "18"]) == 2 and "multiple of 4" in capsys.readouterr().err

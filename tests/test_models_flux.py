"""FLUX.1: the CLI's errors equal the rectified-flow protocol written out from diffusers' parts (encode_prompt, VAE
shift and scale, sigma = (t + 1) / 1000, 2 x 2 packing and latent ids by hand, dev's guidance at 1.0, the v)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_classifier import DiffusionClassifier, Full, Staged, count_calls
from diffusion_classifier.cli import main
from diffusion_classifier.models import FAMILIES, load_adapter
from tiny_models import build_tiny_flux, reference_pixels

LABELS = ["cat", "dog", "car"]
PROMPTS = [f"a photo of a {x}." for x in LABELS]
SIZE = 16  # 8 x 8 latents, 16 packed tokens: the tiny pipeline's default (128 x 2 px) would be slow


@pytest.fixture(scope="module")
def schnell_path(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux") / "schnell", seed=4093)


@pytest.fixture(scope="module")
def dev_path(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux") / "dev", seed=1847, guidance=True)


def pack(x: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) -> (1, h/2 * w/2, 4C): one token per 2 x 2 patch, row-major, features (c, dy, dx)."""
    _, C, h, w = x.shape
    return x.view(1, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, h * w // 4, 4 * C)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    C = tokens.shape[-1] // 4
    return tokens.view(1, h // 2, w // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, C, h, w)


def independent_errors(folder, image_path, prompts, trials, noise, velocity=False, loss="l2") -> np.ndarray:
    """The FLUX protocol from diffusers' own parts: errors[prompt, trial] for trials (t, noise index)."""
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
        out = np.zeros((len(prompts), len(trials)))
        for i, (t, j) in enumerate(trials):
            eps, sigma = noise[j : j + 1], (t + 1) / 1000
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


def classify_json(capsys, *args) -> dict:
    code = main(["classify", *map(str, args), "--image-size", str(SIZE), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize(
    "variant,extra,velocity,loss",
    [
        ("schnell", [], False, "l2"),
        ("dev", [], False, "l2"),
        ("schnell", ["--flow-error", "velocity", "--loss", "l1"], True, "l1"),
    ],
)
def test_flux_cli_errors_equal_the_diffusers_protocol(
    schnell_path, dev_path, image_files, tmp_path, capsys, variant, extra, velocity, loss
):
    folder = schnell_path if variant == "schnell" else dev_path
    timesteps = [0, 333, 640, 998]
    noise = torch.randn(len(timesteps), 4, 8, 8, generator=torch.Generator().manual_seed(17))
    torch.save(noise, tmp_path / "noise.pt")
    steps = ",".join(map(str, timesteps))
    result = classify_json(capsys, image_files[0], "--model", folder, "--labels", *LABELS, *extra,
                           "--timesteps", steps, "--noise-file", tmp_path / "noise.pt")  # fmt: skip
    trials = list(zip(timesteps, range(4)))
    expected = independent_errors(folder, image_files[0], PROMPTS, trials, noise, velocity, loss)
    for k, label in enumerate(LABELS):
        assert result["errors"][label]["timesteps"] == timesteps
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k], rtol=1e-4)
    assert result["prediction"] == LABELS[int(expected.mean(1).argmin())]
    assert result["calls"] == len(LABELS) * len(timesteps)


def test_flux_staged_survivors_prediction_and_call_count(dev_path, image_files, tmp_path, capsys):
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(18))
    torch.save(noise, tmp_path / "noise.pt")
    result = classify_json(capsys, image_files[1], "--model", dev_path, "--labels", *LABELS, "--to-keep", "2", "1",
                           "--n-samples", "2", "4", "--noise-file", tmp_path / "noise.pt")  # fmt: skip
    trials = [(375, 0), (875, 1), (125, 2), (625, 3)]  # stage 1: 375, 875; stage 2 adds 125, 625
    expected = independent_errors(dev_path, image_files[1], PROMPTS, trials, noise)
    survivors = sorted(np.argsort(expected[:, :2].mean(1), kind="stable")[:2])
    assert result["calls"] == count_calls(Staged((2, 4), (2, 1)), 3) == 10
    for k, label in enumerate(LABELS):
        n = 4 if k in survivors else 2
        assert result["errors"][label]["timesteps"] == [t for t, _ in trials[:n]]
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k, :n], rtol=1e-4)
    assert result["prediction"] == LABELS[min(survivors, key=lambda k: expected[k].mean())]


def test_flux_lora_equals_the_lora_fused_by_diffusers(schnell_path, image_files, tmp_path, capsys):
    from diffusers import FluxPipeline

    from test_lora import assert_errors_close, assert_errors_differ, save_random_lora

    lora = save_random_lora(FluxPipeline, schnell_path, tmp_path / "lora", seed=5, denoiser="transformer")
    pipe = FluxPipeline.from_pretrained(schnell_path)  # diffusers fuses the transformer's and the CLIP encoder's
    pipe.load_lora_weights(lora)
    pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=0.7)
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / "fused", safe_serialization=True)

    def errors(model, *extra):
        args = [image_files[0], "--model", model, "--labels", *LABELS, "--timesteps", "50,400,750", "--seed", "2"]
        return classify_json(capsys, *args, *extra)["errors"]

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


def test_flux_predictions_in_python_and_rejected_options(dev_path, image_files, capsys):
    clf = DiffusionClassifier.from_pretrained(dev_path, device="cpu", image_size=SIZE, flow_error="velocity")
    assert clf.model.describe()["flow_error"] == "velocity"
    r = clf(image_files[1], labels=["cat", "dog"], schedule=Full((250, 750)), seed=3)
    assert r.calls == 4 and r.prediction == min(r.errors, key=lambda k: sum(r.errors[k]["values"]))
    args = ["classify", str(image_files[0]), "--model", str(dev_path), "--labels", "a", "b"]
    assert main([*args, "--no-t5"]) == 2 and "--no-t5 applies to sd3 models only" in capsys.readouterr().err
    assert main([*args, "--image-size", "18"]) == 2 and "multiple of 4" in capsys.readouterr().err


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_flux_fast_path_agrees(dev_path, dtype, tol):
    from dataclasses import replace

    from diffusion_classifier.fast import FastConfig, FastModel

    model = load_adapter(str(dev_path), device="cpu", image_size=SIZE)
    fast = FastModel(model, replace(FastConfig.for_device("cpu"), dtype=dtype, min_bucket=4))
    x, t, c = torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 998]), model.condition(["a", "bb", "ccc"])
    torch.testing.assert_close(fast.predict_noise(x, t, c).float(), model.predict_noise(x, t, c), rtol=tol, atol=tol)

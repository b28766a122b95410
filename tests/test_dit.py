"""DiT runs the original network (facebookresearch/DiT models.py) and the published DiT protocol (SPEC.md §3, §8).

The reference is tests/dit_original.py: an independent re-implementation of the original DiT at a tiny size, with
random weights, converted by diffusers' own mapping into a DiTPipeline folder that the package loads. The official
script's arithmetic (eval_prob_dit.py with --t_interval 4 --randomize_noise) is redone in the test: the float64
linear-beta q_sample, the eps half, the l2 error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.cli import main
from diffusion_classifier.core.schedules import Full, count_calls, get_schedule
from diffusion_classifier.errors import UserInputError
from dit_original import (
    CHANNELS,
    CLASSES,
    LATENT,
    NAMES,
    OriginalDiT,
    random_original_dit,
    save_dit_pipeline,
    timestep_embedding,
)

DIT_TIMESTEPS = list(range(2, 1000, 4))


# ---- the official script's arithmetic (eval_prob_dit.py, DiT's GaussianDiffusion) ------------------------------


def official_x0(vae, image: Image.Image) -> torch.Tensor:
    """vae.encode(img).latent_dist.mean * 0.18215 of an image already at the model's size (the ADM crop is a no-op)."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean * 0.18215


def official_errors(net: OriginalDiT, x0: torch.Tensor, cls: int, noise: torch.Tensor) -> torch.Tensor:
    """eval_prob for one class: t in range(2, 1000, 4) with noise i (--randomize_noise), l2 of eps vs the eps half."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # get_named_beta_schedule("linear", 1000)
    alphas_cumprod = np.cumprod(1.0 - betas)
    t = torch.tensor(DIT_TIMESTEPS)
    sqrt_a = torch.from_numpy(np.sqrt(alphas_cumprod))[t].float().view(-1, 1, 1, 1)  # _extract_into_tensor
    sqrt_1ma = torch.from_numpy(np.sqrt(1.0 - alphas_cumprod))[t].float().view(-1, 1, 1, 1)
    x_t = sqrt_a * x0.repeat(len(t), 1, 1, 1) + sqrt_1ma * noise
    with torch.no_grad():
        eps, _ = torch.split(net(x_t, t, torch.full((len(t),), cls)), CHANNELS, dim=1)
    return F.mse_loss(noise, eps, reduction="none").mean(dim=(1, 2, 3))


# ---- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original():
    return random_original_dit()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, original):
    path = tmp_path_factory.mktemp("dit_original")
    save_dit_pipeline(original, path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    arr = np.random.default_rng(3).integers(0, 256, (2 * LATENT, 2 * LATENT, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("dit_image") / "img.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def noise_file(tmp_path_factory):
    """As the official scripts/save_noise.py writes it: torch.randn(N, 4, s/8, s/8) after seed 42."""
    torch.manual_seed(42)
    path = tmp_path_factory.mktemp("dit_noise") / "noise.pt"
    torch.save(torch.randn(len(DIT_TIMESTEPS), CHANNELS, LATENT, LATENT), path)
    return path


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs()).max())


# ---- the network ------------------------------------------------------------------------------------------


def test_the_adapter_embeds_timesteps_as_the_original(folder):
    model = DiffusionClassifier.from_pretrained(folder, device="cpu").model
    t = torch.tensor([0, 1, 2, 498, 999])
    for block in model.transformer.transformer_blocks:
        torch.testing.assert_close(block.norm1.emb.time_proj(t), timestep_embedding(t), rtol=0, atol=0)
        assert block.norm3.eps == 1e-6  # DiTBlock.norm2
    port = DiffusionClassifier.from_pretrained(folder, device="cpu", dit_network="diffusers").model
    assert not torch.allclose(port.transformer.transformer_blocks[0].norm1.emb.time_proj(t), timestep_embedding(t))


@pytest.mark.parametrize("network, same", [("original", True), ("diffusers", False)])
def test_eps_is_the_original_networks(folder, original, network, same):
    model = DiffusionClassifier.from_pretrained(folder, device="cpu", dit_network=network).model
    assert model.describe()["network"] == network
    gen = torch.Generator().manual_seed(5)
    x_t = torch.randn(6, CHANNELS, LATENT, LATENT, generator=gen)
    t, y = torch.tensor([2, 6, 250, 498, 750, 998]), torch.tensor([0, 3, 9, 1, 7, 2])
    with torch.no_grad():
        expected = original(x_t, t, y)[:, :CHANNELS]
        eps = model.predict_noise(x_t, t, model.condition([NAMES[i] for i in y]))
    gap = float((eps - expected).abs().max() / expected.abs().max())
    assert gap < 1e-5 if same else gap > 1e-3


def test_an_unknown_network_is_refused(folder):
    with pytest.raises(UserInputError, match="unknown DiT network 'dit2'.*original, diffusers"):
        DiffusionClassifier.from_pretrained(folder, device="cpu", dit_network="dit2")


# ---- the published protocol, end to end ----------------------------------------------------------------------


def test_per_trial_errors_equal_the_official_scripts(folder, original, image, noise_file, capsys):
    """CLI, default schedule: every class on range(2, 1000, 4) with noise i, the official script's errors."""
    from diffusers import AutoencoderKL

    assert main(["classify", str(image), "--model", str(folder), "--device", "cpu", "--noise-file", str(noise_file),
                 "--batch-size", "250", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["calls"] == 250 * CLASSES
    x0 = official_x0(AutoencoderKL.from_pretrained(folder, subfolder="vae"), Image.open(image))
    noise = torch.load(noise_file)
    for cls, name in enumerate(NAMES):
        assert result["errors"][name]["timesteps"] == DIT_TIMESTEPS
        ours = torch.tensor(result["errors"][name]["values"], dtype=torch.float32)
        assert relative_gap(ours, official_errors(original, x0, cls, noise)) < 1e-5
    official = torch.stack([official_errors(original, x0, c, noise).mean() for c in range(CLASSES)])
    assert result["prediction"] == NAMES[int(official.argmin())]


def test_the_diffusers_network_gives_other_errors(folder, original, image, noise_file, capsys):
    """--dit-network diffusers: the port's errors, which the official script does not compute (the test can fail)."""
    from diffusers import AutoencoderKL

    argv = ["classify", str(image), "--model", str(folder), "--device", "cpu", "--noise-file", str(noise_file),
            "--labels", "class4", "--dit-network", "diffusers", "--json"]  # fmt: skip
    assert main(argv) == 0
    ours = torch.tensor(json.loads(capsys.readouterr().out)["errors"]["class4"]["values"])
    x0 = official_x0(AutoencoderKL.from_pretrained(folder, subfolder="vae"), Image.open(image))
    assert relative_gap(ours, official_errors(original, x0, 4, torch.load(noise_file))) > 1e-4


def test_x_t_is_formed_with_float64_coefficients_as_gaussian_diffusion(folder):
    """DiT's GaussianDiffusion takes sqrt(alpha_bar) and sqrt(1 - alpha_bar) from float64 tables (cast to float32
    when gathered); float32 coefficients differ by up to 8e-5 relative at small t."""
    model = DiffusionClassifier.from_pretrained(folder, device="cpu").model
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    a = np.cumprod(1.0 - betas)
    t = torch.arange(1000)
    x0, eps = torch.randn(1000, 4, 8, 8, generator=torch.Generator().manual_seed(0)).chunk(2, dim=1)
    sqrt_a = torch.from_numpy(np.sqrt(a))[t].float().view(-1, 1, 1, 1)
    sqrt_1ma = torch.from_numpy(np.sqrt(1.0 - a))[t].float().view(-1, 1, 1, 1)
    assert torch.equal(model.forward_process.q_sample(x0, eps, t), sqrt_a * x0 + sqrt_1ma * eps)
    float32 = torch.from_numpy(a).float()
    assert not torch.equal((1 - float32).sqrt(), sqrt_1ma.flatten())  # so the assertion above can fail


def test_the_dit_schedule_is_the_published_protocol():
    schedule, loss = get_schedule("dit")
    assert schedule == Full(tuple(DIT_TIMESTEPS)) and loss == "l2" and len(DIT_TIMESTEPS) == 250
    assert count_calls(schedule, 1000) == 250_000  # SPEC.md §3: 250,000 calls per ImageNet image


def test_dit_defaults_to_the_dit_schedule_and_racing_stays_available(folder, image):
    clf = DiffusionClassifier.from_pretrained(folder, device="cpu")
    labels = ["class1", "class6", "class8"]
    calls = []
    clf.model.predict_noise = counting(clf.model.predict_noise, calls)
    named = clf(image, labels=labels, schedule="dit", batch_size=100)
    default = clf(image, labels=labels, batch_size=100)
    assert named.calls == default.calls == 250 * len(labels) and sum(calls) == 2 * 250 * len(labels)
    assert named.errors == default.errors and default.errors["class6"]["timesteps"] == DIT_TIMESTEPS
    racing = clf(image, labels=labels, schedule="racing", batch_size=100)
    assert racing.errors["class1"]["timesteps"] != DIT_TIMESTEPS


def counting(fn, calls: list[int]):
    """fn, recording the rows of each call."""

    def wrapped(x_t, t, cond):
        calls.append(len(x_t))
        return fn(x_t, t, cond)

    return wrapped


@pytest.mark.parametrize("dtype, fast_dtype, tf32", [("float32", "float32", False), ("bfloat16", "float16", True)])
def test_the_fast_path_keeps_dit_in_float32(folder, dtype, fast_dtype, tf32):
    """On CUDA the fast path runs a float32 DiT as the official script does (no half precision, no TF32 matmuls);
    a DiT loaded in half precision gets the usual fast settings."""
    from diffusion_classifier.models.fast import FastModel

    model = DiffusionClassifier.from_pretrained(folder, device="cpu", torch_dtype=dtype).model
    model.device = torch.device("cuda")  # the settings CUDA would get; building them runs nothing on the device
    config = FastModel(model).config
    assert (config.dtype, config.tf32, config.compile) == (fast_dtype, tf32, True)


def test_dit_network_on_another_model_is_refused(tiny_pipeline, image, capsys):
    model = tiny_pipeline("class-unet")
    argv = ["classify", str(image), "--model", str(model), "--device", "cpu", "--dit-network", "diffusers"]
    assert main(argv) == 2
    assert "--dit-network applies to dit models only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*argv[:-1], "dit2"])  # not a choice
    assert exit_.value.code == 2

"""Own weights: --lora equals the same LoRA fused by diffusers (SD and SDXL), --unet swaps in another UNet."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from diffusion_classifier.cli import main
from tiny_models import build_tiny_sd3, build_tiny_sdxl, classify_json

pytest.importorskip("peft")

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def save_random_lora(pipe_cls, folder, out, seed: int, text_encoders=("text_encoder",), denoiser="unet"):
    """A rank-4 LoRA with random (non-zero) weights on the denoiser's attention and the text encoders, saved the way
    diffusers' training scripts save one (pipeline.save_lora_weights)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = pipe_cls.from_pretrained(folder)
    torch.manual_seed(seed)
    net = getattr(pipe, denoiser)
    net.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=UNET_TARGETS, init_lora_weights=False))
    layers = {f"{denoiser}_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(net))}
    for name in text_encoders:
        encoder = getattr(pipe, name)
        encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TEXT_TARGETS, init_lora_weights=False))
        layers[f"{name}_lora_layers"] = get_peft_model_state_dict(encoder)
    pipe_cls.save_lora_weights(out, safe_serialization=True, **layers)
    return out


def fused_copy(pipe_cls, folder, lora, scale: float, out):
    """The pipeline with the LoRA fused by diffusers (load_lora_weights, fuse_lora, unload), saved as a plain folder."""
    pipe = pipe_cls.from_pretrained(folder)
    pipe.load_lora_weights(lora)
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def errors_json(capsys, image, model, *extra) -> dict:
    args = [image, "--model", model, "--labels", "cat", "dog", "car", "--timesteps", "50,400,750", "--seed", "2"]
    return classify_json(capsys, *args, *extra)["errors"]


def assert_errors_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for label in a:
        np.testing.assert_allclose(a[label]["values"], b[label]["values"], rtol=1e-4)


def assert_errors_differ(a: dict, b: dict) -> None:
    assert any(not np.allclose(a[k]["values"], b[k]["values"], rtol=1e-4) for k in a)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_sd_lora_equals_the_lora_fused_by_diffusers(tiny_sd_path, image_files, tmp_path, capsys, scale):
    from diffusers import StableDiffusionPipeline

    lora = save_random_lora(StableDiffusionPipeline, tiny_sd_path, tmp_path / "lora", seed=31)
    fused = fused_copy(StableDiffusionPipeline, tiny_sd_path, lora, scale, tmp_path / "fused")
    ours = errors_json(capsys, image_files[0], tiny_sd_path, "--lora", lora, "--lora-scale", scale)
    assert_errors_close(ours, errors_json(capsys, image_files[0], fused))
    assert_errors_differ(ours, errors_json(capsys, image_files[0], tiny_sd_path))


def test_sdxl_lora_file_equals_the_lora_fused_by_diffusers(image_files, tmp_path, capsys):
    from diffusers import StableDiffusionXLPipeline

    folder = build_tiny_sdxl(tmp_path / "sdxl", seed=5)
    lora = save_random_lora(
        StableDiffusionXLPipeline, folder, tmp_path / "lora", seed=32, text_encoders=("text_encoder", "text_encoder_2")
    )
    fused = fused_copy(StableDiffusionXLPipeline, folder, lora, 0.8, tmp_path / "fused")
    weights_file = lora / "pytorch_lora_weights.safetensors"  # a .safetensors file works as well as its folder
    ours = errors_json(capsys, image_files[1], folder, "--lora", weights_file, "--lora-scale", "0.8")
    assert_errors_close(ours, errors_json(capsys, image_files[1], fused))
    assert_errors_differ(ours, errors_json(capsys, image_files[1], folder))


def test_sd3_transformer_lora_equals_the_lora_fused_by_diffusers(image_files, tmp_path, capsys):
    from diffusers import StableDiffusion3Pipeline

    folder = build_tiny_sd3(tmp_path / "sd3", seed=6)
    lora = save_random_lora(StableDiffusion3Pipeline, folder, tmp_path / "lora", 33, (), denoiser="transformer")
    fused = fused_copy(StableDiffusion3Pipeline, folder, lora, 1.0, tmp_path / "fused")
    ours = errors_json(capsys, image_files[0], folder, "--lora", lora)
    assert_errors_close(ours, errors_json(capsys, image_files[0], fused))
    assert_errors_differ(ours, errors_json(capsys, image_files[0], folder))


def test_unet_swaps_in_another_unet(tiny_sd_path, image_files, tmp_path, capsys):
    from tiny_models import build_tiny_sd

    other = build_tiny_sd(tmp_path / "other", seed=1)
    hybrid = tmp_path / "hybrid"
    shutil.copytree(tiny_sd_path, hybrid)
    shutil.rmtree(hybrid / "unet")
    shutil.copytree(other / "unet", hybrid / "unet")
    expected = errors_json(capsys, image_files[0], hybrid)
    assert_errors_close(errors_json(capsys, image_files[0], tiny_sd_path, "--unet", other / "unet"), expected)
    assert_errors_close(errors_json(capsys, image_files[0], tiny_sd_path, "--unet", other), expected)  # unet/ in it
    assert_errors_differ(expected, errors_json(capsys, image_files[0], tiny_sd_path))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--lora", "someone/not-cached"], "cannot load LoRA weights"),
        (["--lora-scale", "0.5"], "--lora-scale needs --lora"),
        (["--unet", "no/such/folder/x"], "no such folder"),
        (["--transformer", "x"], "--transformer applies to flux, pixart, sd3 models only, not stable-diffusion ones"),
    ],
)
def test_bad_own_weights_are_one_line_errors(tiny_sd_path, image_files, capsys, extra, message):
    code = main(["classify", str(image_files[0]), "--model", str(tiny_sd_path), "--labels", "a", "b", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

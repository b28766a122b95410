"""Shared fixtures: tiny models built from configs (random weights, saved with save_pretrained, loaded back)."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread: on a small shared machine, oversubscribed OpenMP threads run ~20x slower, not faster.
torch.set_num_threads(1)


def write_tiny_clip_tokenizer(folder) -> None:
    """A byte-level CLIP tokenizer with no merges: every character is a token (offline, 514 entries)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_tiny_sd(path, seed: int = 0, prediction_type: str = "epsilon"):
    """A tiny Stable Diffusion pipeline folder (16 px images, 8x8x4 latents)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=514,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    write_tiny_clip_tokenizer(path / "tokenizer_src")
    tok = CLIPTokenizer(
        str(path / "tokenizer_src" / "vocab.json"), str(path / "tokenizer_src" / "merges.txt"), model_max_length=77
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        steps_offset=1,
        clip_sample=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_class_unet(path, class_names=("cat", "dog", "bird"), size: int = 8, default_schedule=None):
    """A tiny class-conditional UNet2DModel folder (1 channel) in the layout models/class_conditional.py loads."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=len(class_names),
    )
    unet.save_pretrained(path / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(path / "scheduler")
    config = {"class_names": list(class_names), "image_size": size, "channels": 1}
    if default_schedule is not None:
        config["default_schedule"] = default_schedule
    (path / "classifier_config.json").write_text(json.dumps(config))
    return unet


def lowest_mean_error(result) -> str:
    """The label (errors key) of the lowest mean error: the decision of a schedule that gives every label every trial
    (random weights decide nothing else a test could know in advance)."""
    return min(result.errors, key=lambda k: sum(result.errors[k]["values"]) / len(result.errors[k]["values"]))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """tiny_pipeline(name): the folder tiny_models.TINY[name] builds, built once a session."""
    from tiny_models import TINY

    built = {}

    def folder(name: str):
        if name not in built:
            built[name] = TINY[name](tmp_path_factory.mktemp(name) / "pipe")
        return built[name]

    return folder


@pytest.fixture(scope="session")
def tiny_sd_path(tiny_pipeline):
    return tiny_pipeline("stable-diffusion")


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    """Three small RGB images of different sizes and modes, saved as PNG/JPEG."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h, mode) in enumerate([(40, 30, "RGB"), (24, 50, "L"), (32, 32, "RGBA")]):
        arr = rng.integers(0, 256, size=(h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGBA" if mode == "RGBA" else "RGB").convert(mode)
        p = d / f"img{i}.{'jpg' if mode == 'L' else 'png'}"
        img.save(p)
        paths.append(p)
    return paths


def build_tiny_clip(path, seed: int = 0):
    """A tiny CLIP model folder (32 px images, 16-d projections) with tokenizer and image processor config."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514)
    text.update(max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    vision.update(image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    write_tiny_clip_tokenizer(path / "tokenizer_src")
    tok = CLIPTokenizer(
        str(path / "tokenizer_src" / "vocab.json"), str(path / "tokenizer_src" / "merges.txt"), model_max_length=77
    )
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")

"""Tiny SDXL, SD3, PixArt and FLUX pipelines built from configs with random weights (seeded), saved with
save_pretrained; TINY names the folders the model tests share (conftest.tiny_pipeline builds each once a session).

The shapes follow diffusers' own pipeline tests; every tokenizer is made offline (conftest.write_tiny_clip_tokenizer,
and a character-level T5 unigram vocabulary).
"""

from __future__ import annotations

import json
import string
from functools import partial

import torch

from conftest import build_tiny_sd, write_tiny_clip_tokenizer


def classify_json(capsys, *args) -> dict:
    """`classify ARGS --json`: its JSON result (the command must succeed)."""
    from diffusion_classifier.cli import main

    code = main(["classify", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def reference_pixels(image_path, size: int) -> torch.Tensor:
    """SPEC.md preprocessing written out: short side to size (bicubic), center crop, RGB last, [-1, 1]; (1, 3, s, s)."""
    import numpy as np
    from PIL import Image

    img = Image.open(image_path)
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((size, int(h * scale)) if w <= h else (int(w * scale), size), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = round((w - size) / 2), round((h - size) / 2)
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    return torch.tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1


def tiny_clip_tokenizer(folder):
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_clip_encoder(hidden: int, projection: int | None):
    """A 2-layer CLIP text encoder; with a projection when projection is given (the pooled embeddings)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        projection_dim=projection or hidden, hidden_act="gelu",
    )  # fmt: skip
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def tiny_vae(latent_channels: int = 4, **extra):
    """2 blocks: 16 px images, 8 x 8 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=16, **extra,
    )  # fmt: skip


def tiny_sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + the pooled embedding (32)
        cross_attention_dim=64, norm_num_groups=1,
    )  # fmt: skip


def build_tiny_sdxl(path, seed: int = 0):
    """A tiny StableDiffusionXLPipeline folder: CLIP 32 + CLIP-with-projection 32 -> 64-d tokens, 32-d pooled."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    unet, vae = tiny_sdxl_unet(), tiny_vae()
    te1, te2 = tiny_clip_encoder(32, None), tiny_clip_encoder(32, 32)
    tok = tiny_clip_tokenizer(path / "tokenizer_src")
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(vae, te1, te2, tok, tok, unet, scheduler, add_watermarker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def tiny_t5_tokenizer():
    """A character-level T5 (unigram) tokenizer: <pad>, </s>, <unk>, then printable characters."""
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "▁", *string.ascii_letters, *string.digits, *".,;:!?'-"]
    return T5TokenizerFast(vocab=[(p, -1.0) for p in pieces], extra_ids=0), len(pieces)


def build_tiny_sd3(path, seed: int = 0, t5: bool = True):
    """A tiny StableDiffusion3Pipeline folder: two 16-d CLIP encoders (32-d pooled), optionally a 32-d T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
        pos_embed_max_size=16,
    )  # fmt: skip
    vae = tiny_vae(shift_factor=0.0609, scaling_factor=1.5035)
    te1, te2 = tiny_clip_encoder(16, 16), tiny_clip_encoder(16, 16)
    tok = tiny_clip_tokenizer(path / "tokenizer_src")
    te3 = tok3 = None
    if t5:
        tok3, vocab = tiny_t5_tokenizer()
        te3 = T5EncoderModel(
            T5Config(
                vocab_size=vocab,
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
            )
        )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok,
        text_encoder_3=te3, tokenizer_3=tok3,
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def tiny_t5_encoder(vocab: int, d_model: int = 32):
    """A 2-layer T5 encoder over the tiny T5 tokenizer's vocabulary."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8)  # fmt: skip
    return T5EncoderModel(config)


def build_tiny_pixart(path, seed: int = 0, sigma: bool = False, additional_conditions: bool = True):
    """A tiny PixArtAlphaPipeline (or PixArtSigmaPipeline) folder: a 32-d T5, a learned-sigma transformer (4 -> 8
    channels, patch 2) on 8 x 8 latents of 16 px images, PixArt's DPM-Solver scheduler config (linear betas)."""
    import diffusers
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=additional_conditions,
    )  # fmt: skip
    tok, vocab = tiny_t5_tokenizer()
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    pipeline_cls = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
    pipe = pipeline_cls(tokenizer=tok, text_encoder=tiny_t5_encoder(vocab), vae=tiny_vae(),
                        transformer=transformer, scheduler=scheduler)  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_flux(path, seed: int = 0, guidance: bool = False):
    """A tiny FluxPipeline folder (schnell layout; dev's with guidance=True): a 16-d CLIP (pooled 16), a 32-d T5,
    a VAE with 4 latent channels (shift and scale as FLUX's), a transformer on 2 x 2 packed patches (16 channels)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    vae = tiny_vae(shift_factor=0.1159, scaling_factor=0.3611)
    tok2, vocab = tiny_t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=tiny_clip_encoder(16, None),
        tokenizer=tiny_clip_tokenizer(path / "tokenizer_src"), text_encoder_2=tiny_t5_encoder(vocab),
        tokenizer_2=tok2, transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


#: The shared tiny folders: name -> builder(path) -> path (seeds nobody tuned; each family's tests read these).
TINY = {
    "stable-diffusion": build_tiny_sd,
    "sdxl": partial(build_tiny_sdxl, seed=20260417),
    "sd3": partial(build_tiny_sd3, seed=8128),
    "pixart-alpha": partial(build_tiny_pixart, seed=6151),  # with the 1024 px model's micro-conditions
    "pixart-sigma": partial(build_tiny_pixart, seed=3407, sigma=True, additional_conditions=False),
    "flux-schnell": partial(build_tiny_flux, seed=4093),
    "flux-dev": partial(build_tiny_flux, seed=1847, guidance=True),
}

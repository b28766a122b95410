"""Every tiny model folder the tests share, built from configs with random weights (seeded) and saved with
save_pretrained: Stable Diffusion, SDXL, SD3, PixArt, FLUX, the class-conditional UNet, DiT and CLIP. TINY names
the folders the tests share (conftest.tiny_pipeline builds each once a session).

The shapes follow diffusers' own pipeline tests; every tokenizer is made offline (a byte-level CLIP vocabulary
without merges, and a character-level T5 unigram vocabulary).
"""

from __future__ import annotations

import json
import string
from functools import partial

import torch

#: The labels the text families' tests classify among, and their prompts under the default template.
LABELS = ["cat", "dog", "car"]
PROMPTS = [f"a photo of a {x}." for x in LABELS]


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


def tiny_clip_tokenizer(folder):
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def clip_text_config(hidden: int, **extra) -> dict:
    """A 2-layer CLIP text encoder's settings over the tiny tokenizer's 514 tokens."""
    return dict(
        hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, **extra,
    )  # fmt: skip


def tiny_clip_encoder(hidden: int, projection: int | None):
    """A 2-layer CLIP text encoder; with a projection when projection is given (the pooled embeddings)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**clip_text_config(hidden, projection_dim=projection or hidden, hidden_act="gelu"))
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def tiny_vae(latent_channels: int = 4, **extra):
    """2 blocks: 16 px images, 8 x 8 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=16, **extra,
    )  # fmt: skip


def build_tiny_sd(path, seed: int = 0, prediction_type: str = "epsilon"):
    """A tiny Stable Diffusion pipeline folder (16 px images, 8x8x4 latents)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )  # fmt: skip
    vae = tiny_vae()
    text_encoder = CLIPTextModel(CLIPTextConfig(**clip_text_config(32)))  # CLIP's own quick_gelu
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type,
        steps_offset=1, clip_sample=False,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(path / "tokenizer_src"), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


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
        te3 = tiny_t5_encoder(vocab)
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


def build_tiny_class_unet(path, class_names=("cat", "dog", "bird"), size: int = 8, default_schedule=None):
    """A tiny class-conditional UNet2DModel folder (1 channel) in the layout models/class_conditional.py loads."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
        num_class_embeds=len(class_names),
    )  # fmt: skip
    unet.save_pretrained(path / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(path / "scheduler")
    config = {"class_names": list(class_names), "image_size": size, "channels": 1}
    if default_schedule is not None:
        config["default_schedule"] = default_schedule
    (path / "classifier_config.json").write_text(json.dumps(config))
    return path


#: The tiny DiT's ImageNet-like id2label: a name with synonyms, a name shared as a synonym, ids as labels.
DIT_ID2LABEL = {"0": "tench, Tinca tinca", "1": "goldfish", "2": "crane", "3": "crane, bird", "4": "king penguin"}


def tiny_dit_vae(image_size: int):
    """A VAE with one downsampling and 4 latent channels: image_size px images, image_size / 2 latents (DiT's
    tiny stand-ins)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=image_size,
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip


def build_tiny_dit(path):
    """A tiny DiTPipeline folder (learned sigma, patch 2, 8 px images, 4 x 4 latents) with DIT_ID2LABEL's classes."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1, sample_size=4, patch_size=2,
        out_channels=8,  # learned sigma: eps and variance channels
        num_embeds_ada_norm=len(DIT_ID2LABEL),
    )  # fmt: skip
    vae = tiny_dit_vae(8)
    transformer.save_pretrained(path / "transformer", safe_serialization=True)
    vae.save_pretrained(path / "vae", safe_serialization=True)
    DDIMScheduler(num_train_timesteps=1000).save_pretrained(path / "scheduler")
    index = {
        "_class_name": "DiTPipeline",
        "id2label": DIT_ID2LABEL,
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def build_tiny_clip(path, seed: int = 0):
    """A tiny CLIP model folder (32 px images, 16-d projections) with tokenizer and image processor config."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    vision.update(image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=clip_text_config(32), vision_config=vision, projection_dim=16))
    model.save_pretrained(path, safe_serialization=True)
    tiny_clip_tokenizer(path / "tokenizer_src").save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


#: The "digits" folder's default schedule: every class on these timesteps.
DIGITS_TIMESTEPS = [100, 500, 900]

#: The shared tiny folders: name -> builder(path) -> path (seeds nobody tuned; each family's tests read these).
TINY = {
    "stable-diffusion": build_tiny_sd,
    "sdxl": partial(build_tiny_sdxl, seed=20260417),
    "sd3": partial(build_tiny_sd3, seed=8128),
    "pixart-alpha": partial(build_tiny_pixart, seed=6151),  # with the 1024 px model's micro-conditions
    "pixart-sigma": partial(build_tiny_pixart, seed=3407, sigma=True, additional_conditions=False),
    "flux-schnell": partial(build_tiny_flux, seed=4093),
    "flux-dev": partial(build_tiny_flux, seed=1847, guidance=True),
    "class-unet": build_tiny_class_unet,  # classes cat, dog, bird
    "digits": partial(
        build_tiny_class_unet, class_names=[str(d) for d in range(10)], default_schedule={"timesteps": DIGITS_TIMESTEPS}
    ),  # fmt: skip  # builtin:mnist's stand-in
    "dit": build_tiny_dit,
    "clip": build_tiny_clip,
}

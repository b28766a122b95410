"""DiT runs the original network (facebookresearch/DiT models.py) and the published DiT protocol (SPEC.md §3, §8).

The reference here is an independent re-implementation of the original DiT (TimestepEmbedder with the original
frequencies, LabelEmbedder, adaLN-Zero DiTBlock, FinalLayer, patchify/unpatchify, learned sigma) at a tiny size,
with random weights; its state dict goes through diffusers' own conversion mapping (scripts/convert_dit_to_diffusers.py)
into a DiTPipeline folder that the package loads. The official script's arithmetic (eval_prob_dit.py with
--t_interval 4 --randomize_noise) is redone in the test: the float64 linear-beta q_sample, the eps half, the l2 error.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.cli import main
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.schedules import Full, count_calls, get_schedule

# the original DiT at a tiny size: 8x8x4 latents (16 px images), patch 2, hidden 32, 2 heads, depth 2, 10 classes
LATENT, PATCH, HIDDEN, HEADS, DEPTH, CLASSES, CHANNELS = 8, 2, 32, 2, 2, 10, 4
FREQ_DIM = 256  # TimestepEmbedder.frequency_embedding_size
NAMES = [f"class{i}" for i in range(CLASSES)]
DIT_TIMESTEPS = list(range(2, 1000, 4))


# ---- the original network, written from facebookresearch/DiT models.py ------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int = FREQ_DIM, max_period: int = 10000) -> torch.Tensor:
    """TimestepEmbedder.timestep_embedding: frequencies divide by half (not half - 1); cos first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed(dim: int, grid_size: int) -> np.ndarray:
    """get_2d_sincos_pos_embed (from MAE): the first half of the channels encodes grid[0], the column index."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))
    grid = grid.reshape(2, 1, grid_size, grid_size)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """timm's Attention (qkv_bias=True), written out."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5).softmax(dim=-1)  # (B, heads, N, N)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, PATCH * PATCH * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class OriginalDiT(nn.Module):
    """DiT(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=10, learn_sigma=True)."""

    def __init__(self):
        super().__init__()
        self.out_channels = 2 * CHANNELS  # learn_sigma: eps and variance
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(CHANNELS, HIDDEN, kernel_size=PATCH, stride=PATCH)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(FREQ_DIM, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(CLASSES + 1, HIDDEN)  # + the null class of dropout 0.1
        pos = torch.from_numpy(sincos_pos_embed(HIDDEN, LATENT // PATCH)).float()[None]
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(HIDDEN, HEADS) for _ in range(DEPTH))
        self.final_layer = FinalLayer(HIDDEN, self.out_channels)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        c, p, h = self.out_channels, PATCH, int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, h, p, p, c))
        return x.reshape(x.shape[0], c, h * p, h * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed  # (N, T, D)
        c = self.t_embedder.mlp(timestep_embedding(t)) + self.y_embedder.embedding_table(y)  # (N, D)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))  # (N, 2C, H, W)


def random_original_dit(seed: int = 0) -> OriginalDiT:
    """Random weights everywhere (the original zero-inits adaLN and the output, which would hide any difference)."""
    torch.manual_seed(seed)
    model = OriginalDiT()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            fan_in = p[0].numel() if p.ndim > 1 else 10.0
            p.copy_(torch.randn_like(p) / math.sqrt(fan_in))
    return model.eval()


def to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key mapping of diffusers' scripts/convert_dit_to_diffusers.py (every block gets the shared embedders)."""
    out = {
        "pos_embed.proj.weight": sd["x_embedder.proj.weight"],
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
        "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": sd["final_layer.linear.weight"],
        "proj_out_2.bias": sd["final_layer.linear.bias"],
    }
    for d in range(DEPTH):
        b, o = f"transformer_blocks.{d}.", f"blocks.{d}."
        for kind in ("weight", "bias"):
            out[f"{b}norm1.emb.timestep_embedder.linear_1.{kind}"] = sd[f"t_embedder.mlp.0.{kind}"]
            out[f"{b}norm1.emb.timestep_embedder.linear_2.{kind}"] = sd[f"t_embedder.mlp.2.{kind}"]
            out[f"{b}norm1.linear.{kind}"] = sd[f"{o}adaLN_modulation.1.{kind}"]
            q, k, v = torch.chunk(sd[f"{o}attn.qkv.{kind}"], 3, dim=0)
            out[f"{b}attn1.to_q.{kind}"], out[f"{b}attn1.to_k.{kind}"], out[f"{b}attn1.to_v.{kind}"] = q, k, v
            out[f"{b}attn1.to_out.0.{kind}"] = sd[f"{o}attn.proj.{kind}"]
            out[f"{b}ff.net.0.proj.{kind}"] = sd[f"{o}mlp.fc1.{kind}"]
            out[f"{b}ff.net.2.{kind}"] = sd[f"{o}mlp.fc2.{kind}"]
        out[f"{b}norm1.emb.class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
    return {k: v.clone() for k, v in out.items()}  # pos_embed is fixed: diffusers recomputes it


def save_dit_pipeline(original: OriginalDiT, path) -> None:
    """A DiTPipeline folder: the converted transformer, a tiny VAE, DiT's linear-beta scheduler, id2label."""
    from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(  # norm_eps left at its default, as in the converted hub checkpoints
        num_attention_heads=HEADS,
        attention_head_dim=HIDDEN // HEADS,
        in_channels=CHANNELS,
        out_channels=2 * CHANNELS,
        num_layers=DEPTH,
        sample_size=LATENT,
        patch_size=PATCH,
        num_embeds_ada_norm=CLASSES,
    )
    transformer.load_state_dict(to_diffusers(original.state_dict()), strict=True)
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=CHANNELS,
        block_out_channels=(8, 8),  # one downsampling: 16 px images, 8x8 latents
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=2 * LATENT,
    )
    transformer.save_pretrained(path / "transformer", safe_serialization=True)
    vae.save_pretrained(path / "vae", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02).save_pretrained(
        path / "scheduler"
    )
    index = {
        "_class_name": "DiTPipeline",
        "id2label": {str(i): name for i, name in enumerate(NAMES)},
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (path / "model_index.json").write_text(json.dumps(index))


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
    from diffusion_classifier.fast import FastModel

    model = DiffusionClassifier.from_pretrained(folder, device="cpu", torch_dtype=dtype).model
    model.device = torch.device("cuda")  # the settings CUDA would get; building them runs nothing on the device
    config = FastModel(model).config
    assert (config.dtype, config.tf32, config.compile) == (fast_dtype, tf32, True)


def test_dit_network_on_another_model_is_refused(tmp_path, image, capsys):
    from conftest import build_tiny_class_unet

    build_tiny_class_unet(tmp_path)
    argv = ["classify", str(image), "--model", str(tmp_path), "--device", "cpu", "--dit-network", "diffusers"]
    assert main(argv) == 2
    assert "--dit-network applies to dit models only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*argv[:-1], "dit2"])  # not a choice
    assert exit_.value.code == 2

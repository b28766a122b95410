"""The original DiT network (facebookresearch/DiT models.py) at a tiny size, random weights, and its DiTPipeline folder.

An independent re-implementation of the original DiT (TimestepEmbedder with the original frequencies, LabelEmbedder,
adaLN-Zero DiTBlock, FinalLayer, patchify/unpatchify, learned sigma); its state dict goes through diffusers' own
conversion mapping (scripts/convert_dit_to_diffusers.py) into a DiTPipeline folder that the package loads. Shared by
tests/test_dit.py (the network and the official script's errors) and tests/test_protocols.py (the DiT protocols).
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# the original DiT at a tiny size: 8x8x4 latents (16 px images), patch 2, hidden 32, 2 heads, depth 2, 10 classes
# (OriginalDiT takes another latent size and class count: the protocol tests use 1,000 classes)
LATENT, PATCH, HIDDEN, HEADS, DEPTH, CLASSES, CHANNELS = 8, 2, 32, 2, 2, 10, 4
FREQ_DIM = 256  # TimestepEmbedder.frequency_embedding_size
NAMES = [f"class{i}" for i in range(CLASSES)]


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
    """DiT(input_size=latent, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=classes, learn_sigma)."""

    def __init__(self, latent: int = LATENT, classes: int = CLASSES):
        super().__init__()
        self.latent, self.classes = latent, classes
        self.out_channels = 2 * CHANNELS  # learn_sigma: eps and variance
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(CHANNELS, HIDDEN, kernel_size=PATCH, stride=PATCH)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(FREQ_DIM, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(classes + 1, HIDDEN)  # + the null class of dropout 0.1
        pos = torch.from_numpy(sincos_pos_embed(HIDDEN, latent // PATCH)).float()[None]
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


def random_original_dit(seed: int = 0, latent: int = LATENT, classes: int = CLASSES) -> OriginalDiT:
    """Random weights everywhere (the original zero-inits adaLN and the output, which would hide any difference)."""
    torch.manual_seed(seed)
    model = OriginalDiT(latent, classes)
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


def save_dit_pipeline(original: OriginalDiT, path, names: list[str] | None = None) -> None:
    """A DiTPipeline folder: the converted transformer, a tiny VAE, DiT's linear-beta scheduler, id2label (names,
    else class0, class1, ...)."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from tiny_models import tiny_dit_vae

    transformer = DiTTransformer2DModel(  # norm_eps left at its default, as in the converted hub checkpoints
        num_attention_heads=HEADS,
        attention_head_dim=HIDDEN // HEADS,
        in_channels=CHANNELS,
        out_channels=2 * CHANNELS,
        num_layers=DEPTH,
        sample_size=original.latent,
        patch_size=PATCH,
        num_embeds_ada_norm=original.classes,
    )
    transformer.load_state_dict(to_diffusers(original.state_dict()), strict=True)
    torch.manual_seed(1)
    vae = tiny_dit_vae(2 * original.latent)  # its 4 latent channels are CHANNELS
    transformer.save_pretrained(path / "transformer", safe_serialization=True)
    vae.save_pretrained(path / "vae", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02).save_pretrained(
        path / "scheduler"
    )
    index = {
        "_class_name": "DiTPipeline",
        "id2label": {str(i): name for i, name in enumerate(names or [f"class{k}" for k in range(original.classes)])},
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (path / "model_index.json").write_text(json.dumps(index))

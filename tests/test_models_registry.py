"""The model registry: aliases resolve to hub ids, `models` lists every family and alias, and the random-weights
architectures of SDXL base and SD3 medium have their published parameter counts (built on the meta device)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from diffusion_classifier.cli import main
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.models import FAMILIES, model_catalog, resolve_alias
from diffusion_classifier.models.aliases import ALIASES
from diffusion_classifier.models.fast import FastConfig, FastModel
from diffusion_classifier.models.random_weights import ARCHITECTURES, Architecture, RandomWeightsModel, build_network

PUBLISHED_PARAMETERS = {"sdxl-base": 2_567_463_684, "sd3-medium": 2_028_328_000}  # the hub folders' safetensors


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_published_parameter_counts_on_the_meta_device(name):
    with torch.device("meta"):
        net = build_network(ARCHITECTURES[name])
    assert next(net.parameters()).is_meta
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMETERS[name]


def test_every_alias_names_a_hub_id_and_a_family():
    families = {f["name"] for f in model_catalog()["families"]}
    for name, alias in ALIASES.items():
        assert alias.hub_id.count("/") == 1, name
        if alias.family in families:
            assert resolve_alias(name) == alias.hub_id
        else:
            with pytest.raises(UserInputError, match="cannot load yet"):
                resolve_alias(name)
    assert {"stable-diffusion", "sdxl", "sd3", "pixart", "flux", "dit", "class-unet"} <= families
    assert resolve_alias("someone/else") == "someone/else"


def test_an_alias_offline_says_it_is_not_cached(image_files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code = main(["classify", str(image_files[0]), "--labels", "a", "b", "--model", "sdxl"])
    err = capsys.readouterr().err
    assert code == 2 and "stabilityai/stable-diffusion-xl-base-1.0" in err and "not in the local cache" in err
    code = main(["classify", str(image_files[0]), "--labels", "a", "b", "--model", "flux-schnell"])
    err = capsys.readouterr().err
    assert code == 2 and "black-forest-labs/FLUX.1-schnell" in err and len(err.strip().splitlines()) == 1


def test_models_command_lists_families_and_aliases(capsys):
    assert main(["models", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in catalog["aliases"]] == list(ALIASES)
    assert {f["name"] for f in catalog["families"]} == set(FAMILIES)
    sd3 = next(f for f in catalog["families"] if f["name"] == "sd3")
    assert {"no_t5", "flow_error", "transformer", "lora"} <= set(sd3["options"])
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ALIASES) and "sdxl" in out and "(not supported yet)" not in out


TINY_KINDS = {
    "sdxl": Architecture(
        "sdxl",
        {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": [32, 64],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": [2, 4],
            "cross_attention_dim": 64,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 40,
            "norm_num_groups": 1,
        },
        pooled_dim=40,  # more than one row of 64: the packing spans rows
    ),  # fmt: skip
    "sd3": Architecture(
        "sd3",
        {
            "sample_size": 8,
            "patch_size": 2,
            "in_channels": 4,
            "out_channels": 4,
            "num_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "joint_attention_dim": 16,
            "caption_projection_dim": 16,
            "pooled_projection_dim": 40,
            "pos_embed_max_size": 8,
        },
        text_length=12,
        pooled_dim=40,
    ),  # fmt: skip
}


@pytest.mark.parametrize("kind", sorted(TINY_KINDS))
def test_random_weights_sdxl_and_sd3_kinds_run_and_the_fast_path_agrees(kind, monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, f"tiny-{kind}", TINY_KINDS[kind])
    model = RandomWeightsModel(f"tiny-{kind}")
    assert model.forward_process.parameterization == ("flow" if kind == "sd3" else "epsilon")
    x, t, c = torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 998]), model.condition(["a", "b", "c"])
    out = model.predict_noise(x, t, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    fast = FastModel(model, replace(FastConfig.for_device("cpu"), min_bucket=4))
    torch.testing.assert_close(fast.predict_noise(x, t, c), out, rtol=1e-5, atol=1e-6)
    assert fast.forward_process is model.forward_process

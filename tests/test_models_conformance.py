"""Every registered model family passes the same checks: it loads from a saved folder, keeps the adapter interface
(shapes, describe, to(), the fast path), and, for the text families, the CLI's `--json --timesteps --noise-file`
errors equal the family's independent protocol (written straight from diffusers in the family's own test file),
with the right predictions and exact staged call counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import test_classify
import test_models_flux
import test_models_pixart
import test_models_sd3
import test_models_sdxl
from conftest import lowest_mean_error
from diffusion_classifier import DiffusionClassifier, Full, Staged, count_calls
from diffusion_classifier.models import FAMILIES, load_adapter, model_catalog
from diffusion_classifier.models.fast import FastConfig, FastModel
from tiny_models import LABELS, PROMPTS, classify_json

# ---- the cases: a tiny folder per family (and per protocol variant) ---------------------------------------


@dataclass(frozen=True)
class Case:
    """A family on a tiny folder: load options, and for text families the independent protocol and its variant.

    protocol(folder, image, prompts, timesteps, noise, **kw) -> errors[prompt, trial], noise[i] for timesteps[i];
    args: the CLI flags of the variant, kw: the protocol's matching arguments.
    """

    family: str
    folder: str  # a tiny_models.TINY name
    protocol: Callable[..., np.ndarray] | None = None
    args: tuple[str, ...] = ()
    kw: dict[str, Any] = field(default_factory=dict)
    size: int = 16  # the input size (px) the case runs at: 8 x 8 latents with the tiny VAEs

    @property
    def cli_args(self) -> list[str]:
        return [*self.args, "--image-size", str(self.size)]


FLOW_L1 = ("--flow-error", "velocity", "--loss", "l1")
CASES = {
    "stable-diffusion": Case("stable-diffusion", "stable-diffusion", test_classify.independent_errors),
    "sdxl": Case("sdxl", "sdxl", test_models_sdxl.independent_errors),
    "sd3": Case("sd3", "sd3", test_models_sd3.independent_errors),
    "sd3-no-t5": Case("sd3", "sd3", test_models_sd3.independent_errors, ("--no-t5",), {"t5": False}),
    "sd3-velocity-l1": Case(
        "sd3", "sd3", test_models_sd3.independent_errors, FLOW_L1, {"velocity": True, "loss": "l1"}
    ),
    "pixart-alpha": Case("pixart", "pixart-alpha", test_models_pixart.independent_errors),
    "pixart-alpha-32": Case("pixart", "pixart-alpha", test_models_pixart.independent_errors, kw={"size": 32}, size=32),
    "pixart-sigma": Case("pixart", "pixart-sigma", test_models_pixart.independent_errors),
    "flux-schnell": Case("flux", "flux-schnell", test_models_flux.independent_errors),
    "flux-dev": Case("flux", "flux-dev", test_models_flux.independent_errors),
    "flux-velocity-l1": Case(
        "flux", "flux-schnell", test_models_flux.independent_errors, FLOW_L1, {"velocity": True, "loss": "l1"}
    ),
    "class-unet": Case("class-unet", "class-unet", size=8),
    "dit": Case("dit", "dit", size=8),
}
TEXT = sorted(name for name, case in CASES.items() if case.protocol is not None)
#: One case per family: the interface checks.
FAMILY_CASES = {case.family: name for name, case in reversed(list(CASES.items()))}


@pytest.fixture(scope="module")
def folders(tiny_pipeline):
    """folders(case): the case's tiny folder."""
    return lambda case: tiny_pipeline(case.folder)


def save_noise(tmp_path, n: int, size: int, seed: int):
    noise = torch.randn(n, 4, size // 2, size // 2, generator=torch.Generator().manual_seed(seed))
    torch.save(noise, tmp_path / "noise.pt")
    return noise, tmp_path / "noise.pt"


# ---- every family --------------------------------------------------------------------------------------


def test_every_registered_family_has_a_conformance_case():
    model_catalog()  # imports every family module
    assert set(FAMILY_CASES) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_loads_from_its_folder_and_keeps_the_interface(family, folders, image_files):
    case = CASES[FAMILY_CASES[family]]
    folder = folders(case)
    assert [f.name for f in FAMILIES.values() if f.detect(folder)] == [family]  # its own family, no other
    model = load_adapter(str(folder), device="cpu", image_size=case.size)
    assert model.denoiser_attr in model.networks() and model.num_train_timesteps == 1000
    assert isinstance(model.open_image(image_files[0]), Image.Image)
    x0 = model.encode(image_files[0])
    assert x0.shape == model.latent_shape and x0.dtype == torch.float32
    labels = model.class_names[:2] if model.conditioning == "class" else ["a cat", "a dog"]
    cond = model.condition(labels)
    x_t, t = torch.stack([x0, x0]), torch.tensor([10, 900])
    out = model.predict_noise(x_t, t, cond)
    assert out.shape == x_t.shape and torch.isfinite(out).all() and not torch.equal(out[0], out[1])
    described = model.describe()
    assert described["adapter"] == type(model).__name__ and described["model"] == str(folder)
    assert described["image_size"] == case.size and described["dtype"] == "float32"
    # to(): every network cast but those the family keeps in float32 (a VAE); the adapter still predicts
    assert model.to("cpu", torch.bfloat16) is model and model.dtype == torch.bfloat16
    for name, net in model.networks().items():
        expected = torch.float32 if name in model.float32_networks else torch.bfloat16
        assert {p.dtype for p in net.parameters()} == {expected}, name
    low = cond.to(torch.bfloat16) if cond.is_floating_point() else cond
    low_out = model.predict_noise(x_t.to(torch.bfloat16), t, low)
    assert low_out.shape == x_t.shape and torch.isfinite(low_out).all()
    assert model.describe()["dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
@pytest.mark.parametrize("name", ["stable-diffusion", "sdxl", "sd3", "pixart-alpha", "flux-dev"])
def test_the_fast_path_agrees(name, folders, dtype, tol):
    case = CASES[name]
    model = load_adapter(str(folders(case)), device="cpu", image_size=case.size)
    fast = FastModel(model, replace(FastConfig.for_device("cpu"), dtype=dtype, min_bucket=4))
    x, t, c = torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 998]), model.condition(["a", "bb", "ccc"])
    torch.testing.assert_close(fast.predict_noise(x, t, c).float(), model.predict_noise(x, t, c), rtol=tol, atol=tol)


# ---- text families: the CLI's errors equal the family's own protocol -------------------------------------


@pytest.mark.parametrize("name", TEXT)
def test_cli_errors_equal_the_family_protocol(name, folders, image_files, tmp_path, capsys):
    case, timesteps = CASES[name], [0, 311, 640, 998]
    noise, noise_file = save_noise(tmp_path, len(timesteps), case.size, seed=61)
    folder = folders(case)
    result = classify_json(capsys, image_files[0], "--model", folder, "--labels", *LABELS, *case.cli_args,
                           "--timesteps", ",".join(map(str, timesteps)), "--noise-file", noise_file)  # fmt: skip
    expected = case.protocol(folder, image_files[0], PROMPTS, timesteps, noise, **case.kw)
    for k, label in enumerate(LABELS):
        assert result["errors"][label]["timesteps"] == timesteps
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k], rtol=1e-4)
    assert result["prediction"] == LABELS[int(expected.mean(1).argmin())]
    assert result["calls"] == len(LABELS) * len(timesteps)


@pytest.mark.parametrize("name", ["stable-diffusion", "sdxl", "sd3", "pixart-alpha", "flux-dev"])
def test_staged_survivors_prediction_and_call_count(name, folders, image_files, tmp_path, capsys):
    # n_samples 2 4: master grid 125, 375, 625, 875; stage 1 evaluates 375, 875 (noise 0, 1), stage 2 adds 125, 625
    case, timesteps = CASES[name], [375, 875, 125, 625]
    noise, noise_file = save_noise(tmp_path, 4, case.size, seed=62)
    folder = folders(case)
    result = classify_json(capsys, image_files[1], "--model", folder, "--labels", *LABELS, *case.cli_args,
                           "--to-keep", "2", "1", "--n-samples", "2", "4", "--noise-file", noise_file)  # fmt: skip
    expected = case.protocol(folder, image_files[1], PROMPTS, timesteps, noise, **case.kw)
    survivors = sorted(np.argsort(expected[:, :2].mean(1), kind="stable")[:2])
    assert result["calls"] == count_calls(Staged((2, 4), (2, 1)), 3) == 3 * 2 + 2 * 2
    for k, label in enumerate(LABELS):
        n = 4 if k in survivors else 2
        assert result["errors"][label]["timesteps"] == timesteps[:n]
        np.testing.assert_allclose(result["errors"][label]["values"], expected[k, :n], rtol=1e-4)
    assert result["prediction"] == LABELS[min(survivors, key=lambda k: expected[k].mean())]


@pytest.mark.parametrize("name", ["stable-diffusion", "sdxl", "sd3", "pixart-alpha", "flux-dev"])
def test_predictions_in_python(name, folders, image_files):
    case = CASES[name]
    clf = DiffusionClassifier.from_pretrained(folders(case), device="cpu", image_size=case.size)
    r = clf(image_files[1], labels=["cat", "dog"], schedule=Full((250, 750)), seed=3)
    assert r.calls == 4 and r.prediction == lowest_mean_error(r)

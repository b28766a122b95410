"""The fast path on the CPU (uncompiled: compiling takes minutes here) and the bench command."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from diffusion_classifier import DiffusionClassifier, Full
from diffusion_classifier.bench.flops import count_flops, flops_per_call
from diffusion_classifier.bench.throughput import agreement
from diffusion_classifier.cli import main
from diffusion_classifier.core.estimator import Pair, Trial, model_error_fn
from diffusion_classifier.core.noise import NoiseBank
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.models.fast import FastConfig, FastModel, apply_fast, bucket, resolve_fast
from diffusion_classifier.models.gaussian import GaussianClassModel
from diffusion_classifier.models.random_weights import ARCHITECTURES, RandomWeightsModel, build_network

EAGER = FastConfig.for_device("cpu", channels_last=False, batch_size=8)  # float32, eager: only the padding acts


@pytest.fixture(scope="module")
def tiny() -> RandomWeightsModel:
    return RandomWeightsModel("tiny", seed=0)


def errors(model, n_labels: int = 3, n_trials: int = 7, batch_size: int = 5) -> torch.Tensor:
    """Errors of n_labels x n_trials pairs on one seeded latent, (labels, trials)."""
    cond = model.condition([f"label {i}" for i in range(n_labels)])
    x0 = torch.randn(*model.latent_shape, generator=torch.Generator().manual_seed(3))
    pairs = [Pair(c, Trial(t, i)) for c in range(n_labels) for i, t in enumerate(range(50, 1000, 1000 // n_trials))]
    fn = model_error_fn(model, x0, cond, NoiseBank(model.latent_shape, seed=1), batch_size=batch_size)
    return fn(pairs[: n_labels * n_trials]).view(n_labels, -1)


def test_bucket_pads_to_powers_of_two_within_the_batch_size():
    assert [bucket(n, 256) for n in (1, 8, 9, 33, 200, 256)] == [8, 8, 16, 64, 256, 256]
    assert bucket(20, 32) == 32 and bucket(48, 48) == 48 and bucket(3, 4) == 4


def test_fast_is_on_where_safe_only():
    assert resolve_fast(None, "cuda") and not resolve_fast(None, "cpu")
    assert resolve_fast(True, "cpu") and not resolve_fast(False, "cuda")
    assert FastConfig.for_device("cuda").dtype == "float16" and FastConfig.for_device("cuda").compile
    cpu = FastConfig.for_device("cpu")
    assert cpu.dtype == "float32" and not cpu.compile


def test_bad_fast_config_is_a_user_error():
    with pytest.raises(UserInputError, match="compile mode"):
        FastConfig(compile_mode="fastest")
    with pytest.raises(UserInputError, match="dtype"):
        FastConfig(dtype="int8")


def test_padding_keeps_errors_and_shapes_static(tiny):
    fast = FastModel(tiny, EAGER)
    shapes: list[int] = []
    fast.fast.net.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape[0]))
    a, b = errors(tiny, batch_size=5), errors(fast, batch_size=5)  # 21 pairs: calls of 5, 5, 5, 5, 1 rows
    assert set(shapes) == {8}, "every call is padded to the bucket shape 8"
    torch.testing.assert_close(b, a, rtol=1e-6, atol=0)


def test_channels_last_errors_within_1e5(tiny):
    fast = FastModel(tiny, FastConfig.for_device("cpu", channels_last=True))
    assert fast.channels_last and fast.fast.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = errors(tiny), errors(fast)
    assert float(((b - a).abs() / a.abs()).max()) < 1e-5


def test_half_precision_fast_path_is_close(tiny):
    fast = FastModel(tiny, FastConfig.for_device("cpu", dtype="bfloat16"))  # also casts the float32 text rows
    assert fast.dtype == torch.bfloat16 and tiny.net.dtype == torch.float32, "the original network stays float32"
    a, b = errors(tiny), errors(fast)
    assert 0 < float(((b - a).abs() / a.abs()).max()) < 0.02  # bf16 keeps 8 bits of mantissa


def test_overflowed_rows_are_redone_in_float32(tiny, caplog):
    fast = FastModel(tiny, EAGER)
    predict = fast.fast.predict_noise

    def overflowing(x_t, t, cond):  # fp16 overflow, simulated: rows with t > 500 come back NaN or inf
        out = predict(x_t, t, cond).clone()
        out[t > 500] = torch.tensor([float("nan"), float("inf")]).repeat(out[0].numel() // 2).view(out.shape[1:])
        return out

    fast.fast.predict_noise = overflowing
    with caplog.at_level(logging.WARNING, logger="diffusion_classifier.core.estimator"):
        b = errors(fast)
    assert "not finite" in caplog.text
    torch.testing.assert_close(b, errors(tiny), rtol=1e-6, atol=0)
    check = agreement(tiny, fast, images=1, labels=2)  # 2 labels x 4 trials, t = 125, 375, 625, 875
    assert (check.overflowed, check.predictions_agree) == (4, 1) and check.max_rel_error < 1e-6


def test_without_a_safe_mode_non_finite_errors_stay(tiny, monkeypatch):
    predict = tiny.predict_noise
    monkeypatch.setattr(
        tiny,
        "predict_noise",
        lambda x, t, c: predict(x, t, c) * torch.where(t > 500, torch.nan, 1.0)[:, None, None, None],
    )
    e = errors(tiny)
    assert tiny.safe() is None and e.isnan().any() and e.isfinite().any()


def test_out_of_memory_halves_the_batch_and_goes_on(tiny):
    fast = FastModel(tiny, FastConfig.for_device("cpu", batch_size=16))
    predict, seen = fast.fast.predict_noise, []

    def small_card(x_t, t, cond):  # a card that holds 4 rows per call
        seen.append(len(x_t))
        if len(x_t) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return predict(x_t, t, cond)

    fast.fast.predict_noise = small_card
    b = errors(fast, batch_size=16)
    assert fast.batch_size == 4 and seen[:3] == [16, 8, 4]
    torch.testing.assert_close(b, errors(tiny, batch_size=16), rtol=1e-6, atol=0)
    fast.batch_size = 1
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fast.fast.predict_noise = lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom"))
        fast.predict_noise(
            *[v[:1] for v in (torch.zeros(1, 4, 8, 8), torch.zeros(1, dtype=torch.long))], tiny.condition(["x"])
        )


def test_batch_size_none_uses_the_models_own(tiny):
    fast = FastModel(tiny, FastConfig.for_device("cpu", batch_size=16))
    shapes: list[int] = []
    fast.fast.net.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape[0]))
    errors(fast, n_labels=2, n_trials=16, batch_size=None)  # 32 pairs: two calls of 16
    assert shapes == [16, 16]


class ToyConvNet(torch.nn.Module):
    """Four 3x3 convolutions; a forward of its own (dynamo does not trace nn.Sequential's, which torch ships)."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in ((1, 8), (8, 8), (8, 8), (8, 1))
        )

    def forward(self, x):
        for conv in self.convs:
            x = torch.nn.functional.silu(conv(x))
        return x


class ToyConvModel(GaussianClassModel):
    """The analytic Gaussian model's interface with a small conv denoiser: cheap enough to torch.compile here."""

    denoiser_attr = "net"

    def __init__(self):
        super().__init__(torch.zeros(4, 1, 8, 8))
        torch.manual_seed(0)
        self.net = ToyConvNet().eval()

    def condition(self, conditions):
        return torch.arange(len(conditions))

    def predict_noise(self, x_t, t, cond):
        return self.net(x_t) * (1 + t.view(-1, 1, 1, 1) / 1000) + cond.view(-1, 1, 1, 1)


def test_compiled_fast_path_compiles_one_graph_per_shape_and_keeps_errors():
    from torch._dynamo.utils import counters

    model = ToyConvModel()
    fast = FastModel(model, FastConfig.for_device("cpu", compile=True, batch_size=8))
    torch._dynamo.reset()
    counters.clear()
    x, t, c = torch.randn(8, 1, 8, 8), torch.arange(8) * 100, torch.arange(8) % 4
    torch.testing.assert_close(fast.predict_noise(x, t, c), model.predict_noise(x, t, c), rtol=1e-5, atol=1e-6)
    a = errors(model, n_labels=4, n_trials=5, batch_size=8)  # 20 pairs: 8, 8 and 4 padded to 8
    b = errors(fast, n_labels=4, n_trials=5, batch_size=8)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=0)
    assert counters["stats"]["unique_graphs"] == 1, "normal and inference inputs, padded or not: one graph"


def test_pipeline_fast_on_cpu_only_when_asked(tiny_sd_path, image_files):
    plain = DiffusionClassifier.from_pretrained(tiny_sd_path, device="cpu")
    fast = DiffusionClassifier.from_pretrained(tiny_sd_path, device="cpu", fast=True)
    assert not isinstance(plain.model, FastModel) and isinstance(fast.model, FastModel)
    assert fast.model.describe()["fast"]["attention"] == ["AttnProcessor2_0"]  # SDPA
    sched = Full(tuple(range(5, 1000, 100)))
    a = plain(image_files[0], labels=["cat", "dog", "car"], schedule=sched, seed=1)
    b = fast(image_files[0], labels=["cat", "dog", "car"], schedule=sched, seed=1)
    assert a.prediction == b.prediction
    for label, row in a.errors.items():
        torch.testing.assert_close(
            torch.tensor(b.errors[label]["values"]), torch.tensor(row["values"]), rtol=1e-5, atol=0
        )
    assert apply_fast(fast.model, True) is fast.model


def test_classify_fast_flag_and_auto_batch_size(tiny_sd_path, image_files, capsys):
    common = ["classify", image_files[1], "--model", tiny_sd_path, "--labels", "cat", "dog", "--device", "cpu"]
    common += ["--timesteps", "100,400,700", "--json"]
    runs = {}
    for flag in ("--fast", "--no-fast"):
        assert main([str(a) for a in [*common, flag, "--batch-size", "auto"]]) == 0
        runs[flag] = json.loads(capsys.readouterr().out)
    assert runs["--fast"]["prediction"] == runs["--no-fast"]["prediction"]
    for label, row in runs["--no-fast"]["errors"].items():
        torch.testing.assert_close(
            torch.tensor(runs["--fast"]["errors"][label]["values"]), torch.tensor(row["values"]), rtol=1e-5, atol=0
        )


def test_flops_count_attention():
    q = torch.randn(2, 4, 64, 8)
    flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * 2 * (2 * 4 * 64 * 64 * 8)  # QK^T and PV, 2 FLOPs per multiply-add


def test_flops_per_call_counts_one_row(tiny):
    x = torch.randn(4, *tiny.latent_shape)
    t, cond = torch.full((4,), 500), tiny.condition(["a"] * 4)
    one = flops_per_call(tiny, x, t, cond)
    assert one == count_flops(lambda: tiny.predict_noise(x[:1], t[:1], cond[:1])) > 10_000_000


# DiT-XL/2's 675,129,632 (paper) counts its fixed position embedding (256 x 1152) as a parameter; diffusers' port
# keeps it as a buffer and gives each of the 28 blocks its own copy of the timestep and class embedders.
DIT_XL_2_256 = 675_129_632 - 256 * 1152 + 27 * (256 * 1152 + 1152 + 1152 * 1152 + 1152 + 1001 * 1152)


@pytest.mark.parametrize(
    "name, params", [("sd2-base", 865_910_724), ("sd15", 859_520_964), ("dit-xl-2-256", DIT_XL_2_256)]
)
def test_published_architectures_have_the_published_size(name, params):
    with torch.device("meta"):  # shapes only: no memory, no time
        net = build_network(ARCHITECTURES[name])
    assert sum(p.numel() for p in net.parameters()) == params


def test_bench_json_on_cpu(capsys):
    args = ["bench", "--random-weights", "tiny", "--device", "cpu", "--warmup", "1", "--iters", "2", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    ref, fast = out["rows"]
    assert (ref["name"], fast["name"]) == ("reference", "fast") and out["calls_per_image"] == 2750
    for row in (ref, fast):
        assert row["calls_per_s"] > 0 and row["tflops"] > 0
        assert row["seconds_per_image"] == pytest.approx(2750 / row["calls_per_s"])
        assert row["tflops"] == pytest.approx(out["flops_per_call"] * row["calls_per_s"] / 1e12)
    assert out["speedup"] == pytest.approx(fast["calls_per_s"] / ref["calls_per_s"])
    assert out["agreement"]["max_rel_error"] < 1e-5 and out["agreement"]["predictions_agree"] == 4
    assert out["agreement"]["overflowed"] == 0


def test_bench_bad_input_exits_2(capsys):
    assert main(["bench", "--random-weights", "tiny", "--device", "cpu", "--schedule", "nope"]) == 2
    assert "unknown schedule" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["classify", "x.png", "--model", "m", "--labels", "a", "--batch-size", "many"])
    assert exc.value.code == 2


@pytest.mark.parametrize("command", ["classify", "eval", "calibrate", "match"])
@pytest.mark.parametrize("flag", ["--fast", "--no-fast"])
def test_every_model_command_honours_the_fast_flag(command, flag, image_files, tmp_path, monkeypatch, capsys):
    """The CLI loads its classifier in one place (options.load_classifier), so --fast reaches each command."""
    seen = {}

    def record(model, **kwargs):
        seen.update(kwargs)
        raise UserInputError("recorded")  # stop before any model work

    monkeypatch.setattr(DiffusionClassifier, "from_pretrained", record)
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "0.png").write_bytes(image_files[0].read_bytes())
    folder = f"folder:{tmp_path / 'data'}"
    argv = {
        "classify": [str(image_files[0]), "--labels", "cat", "dog"],
        "eval": ["--dataset", folder, "--out", str(tmp_path / "run")],
        "calibrate": ["--data", folder, "--out", str(tmp_path / "w.json")],
        "match": ["--images", str(image_files[0]), "--captions", "a cat", "a dog"],
    }[command]
    assert main([command, *argv, "--model", "unused", flag, "--device", "cpu"]) == 2
    assert "recorded" in capsys.readouterr().err
    assert seen["fast"] is (flag == "--fast") and seen["device"] == "cpu"

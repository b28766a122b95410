"""Many images in flight: the packer fills model calls with rows of several images, and no image can tell."""

from __future__ import annotations

import pytest
import torch

from diffusion_classifier import DiffusionClassifier, ErrorLedger, Full, Racing, Staged, UserInputError
from diffusion_classifier.core.estimator import model_error_fn, model_errors
from diffusion_classifier.core.noise import NoiseBank
from diffusion_classifier.core.packer import Flight, Packer
from diffusion_classifier.data import mnist as mnist_data
from diffusion_classifier.models.fast import FastConfig, FastModel
from diffusion_classifier.models.gaussian import GaussianClassModel
from diffusion_classifier.pipeline import ClassificationResult

RACE = Racing(alpha=0.05, cap=40, round_trials=5, min_trials=10)  # rounds of 10 labels x 5 trials = 50 rows


@pytest.fixture(scope="module")
def mnist() -> DiffusionClassifier:
    return DiffusionClassifier.from_pretrained("builtin:mnist", device="cpu")


@pytest.fixture(scope="module")
def held_out() -> list:
    images, _ = mnist_data.test_images()
    return [images[i] for i in (0, 1, 2, 3)]


def assert_same(a: ClassificationResult, b: ClassificationResult) -> None:
    """The same decision from the same errors (float32: 1e-6 relative), the same trials and calls."""
    assert (a.prediction, a.calls, a.errors.keys()) == (b.prediction, b.calls, b.errors.keys())
    for key, e in a.errors.items():
        assert e["timesteps"] == b.errors[key]["timesteps"]
        torch.testing.assert_close(torch.tensor(b.errors[key]["values"]), torch.tensor(e["values"]), rtol=1e-6, atol=0)


def test_an_image_has_the_same_errors_alone_with_others_and_in_another_order(mnist, held_out):
    kw = dict(schedule=RACE, seed=2, batch_size=32)  # 50-row rounds: requests split across calls and images
    alone = mnist(held_out[0], **kw)
    together = mnist(held_out, **kw)
    reordered = mnist(held_out[::-1], **kw)
    assert isinstance(alone, ClassificationResult) and len(together) == len(reordered) == 4
    assert_same(alone, together[0])
    for a, b in zip(together, reordered[::-1]):
        assert_same(a, b)
    # ... and the errors of the unpacked path: the schedule run on one image's own error function
    ledger = ErrorLedger(
        model_error_fn(mnist.model, mnist.model.encode(held_out[0]), mnist.conditions(mnist.candidates().conditions),
                       mnist.noise_bank(2), batch_size=17), 10)  # fmt: skip
    RACE.run(ledger, 1000)
    assert ledger.calls == alone.calls and ledger.errors[0] == pytest.approx(alone.errors["0"]["values"], rel=1e-6)


def test_text_model_images_share_calls_with_the_same_errors(tiny_sd_path, image_files):
    clf = DiffusionClassifier.from_pretrained(tiny_sd_path)
    kw = dict(labels=["cat", "dog", "car"], schedule=Staged((2, 4), (2, 1)), seed=1, batch_size=4)
    together = clf(image_files, **kw)
    for path, result in zip(image_files, together):
        assert result.image == str(path)
        assert_same(clf(path, **kw), result)


def gaussian_model(classes: int = 10, seed: int = 0) -> GaussianClassModel:
    g = torch.Generator().manual_seed(seed)
    return GaussianClassModel(torch.randn(classes, 1, 4, 4, generator=g) * 0.6, std=1.0)


def gaussian_flights(model: GaussianClassModel, n: int, ledgers: list[ErrorLedger]):
    """n images of the Gaussian model, each with a ledger and its racing plan, as the classifier flies them."""
    g = torch.Generator().manual_seed(1)
    cond = model.condition(model.class_names)
    for y in range(n):
        ledgers.append(ErrorLedger(None, len(cond)))
        x0 = model.sample(torch.tensor([y % len(cond)]), generator=g)[0]
        yield y, Flight(x0, cond, Racing(alpha=0.01).plan(ledgers[-1], 1000))


def test_calls_are_full_while_images_remain_and_results_stream():
    model, ledgers, sizes, opened = gaussian_model(), [], [], {"all": False}
    inner = model_errors(model, NoiseBank(model.latent_shape, seed=0))

    def counted(calls, size):
        sizes.extend(sum(len(seg.pairs) for seg in call) for call in calls)
        return inner(calls, size)

    def flights():
        yield from gaussian_flights(model, 200, ledgers)
        opened["all"], opened["calls"] = True, len(sizes)

    packer = Packer(counted, lambda: 64)
    landed = []
    for key, error, seconds in packer.run(flights()):
        assert error is None and seconds > 0
        landed.append((key, opened["all"]))
    assert sorted(k for k, _ in landed) == list(range(200))
    assert not landed[0][1], "the first image landed before the last was opened"
    assert set(sizes[: opened["calls"]]) == {64}, "no short call while an image was left to open"
    assert packer.stats.rows == sum(sizes) == sum(lg.calls for lg in ledgers)
    assert packer.stats.fill >= 0.95


def test_a_bad_image_fails_alone(mnist, held_out, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")

    def decoder_fails():
        raise OSError("truncated file")

    kw = dict(schedule=Full((100, 500, 900)), batch_size=16)
    out = dict(mnist.classify_stream([held_out[0], broken, decoder_fails, lambda: held_out[1]], **kw))
    assert isinstance(out[1], UserInputError) and "cannot read image" in str(out[1])
    assert isinstance(out[2], OSError)
    assert_same(mnist(held_out[0], **kw), out[0])
    assert_same(mnist(held_out[1], **kw), out[3])
    with pytest.raises(UserInputError, match="cannot read image"):
        mnist([held_out[0], broken], **kw)
    assert mnist([], **kw) == []


def test_bad_settings_raise_before_any_image_is_opened(mnist):
    pulled = []

    def images():
        pulled.append(1)
        yield from ()

    with pytest.raises(UserInputError):
        mnist.classify_stream(images(), temperature=-1.0)
    assert not pulled


def test_the_fast_path_runs_through_the_packer(mnist, held_out):
    fast = DiffusionClassifier(FastModel(mnist.model, FastConfig.for_device("cpu", channels_last=False, batch_size=16)))
    shapes: list[int] = []
    fast.model.fast.unet.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape[0]))
    kw = dict(schedule=Full((100, 300, 500, 700, 900)), seed=4, batch_size=None)  # 4 images x 50 rows
    for a, b in zip(mnist(held_out, **kw), fast(held_out, **kw)):
        assert_same(a, b)
    assert set(shapes) == {16}, "calls of the fast path's own batch size, static shapes"


def test_hugging_face_form(mnist, held_out):
    result = mnist(held_out[0], schedule=Full((100, 500, 900)))
    hf = result.to_hf()
    assert [d["label"] for d in hf] == [s["label"] for s in result.scores]
    assert [d["score"] for d in hf] == sorted((d["score"] for d in hf), reverse=True)
    assert sum(d["score"] for d in hf) == pytest.approx(1.0) and hf[0]["label"] == result.prediction
    assert set(hf[0]) == {"score", "label"}

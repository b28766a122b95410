"""Class-conditional families (UNet2DModel with class embeddings, DiT), the MNIST split, training, and builtin:mnist."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import lowest_mean_error
from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.core.schedules import Full
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.models.class_conditional import ClassUNetModel, DiTModel, adm_center_crop, use_original_dit


def random_image(size, mode="RGB", seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


# ---- UNet2DModel with class embeddings ----------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_folder(tiny_pipeline):
    return tiny_pipeline("class-unet")


def test_class_unet_loads_and_classifies(unet_folder):
    clf = DiffusionClassifier.from_pretrained(unet_folder, device="cpu", image_size=None)
    assert isinstance(clf.model, ClassUNetModel)
    assert clf.model.conditioning == "class" and clf.model.class_names == ["cat", "dog", "bird"]
    assert clf.model.latent_shape == (1, 8, 8)
    json.dumps(clf.model.describe())
    result = clf(random_image((8, 8)), schedule=Full((100, 500, 900)), batch_size=4)
    assert result.prediction == lowest_mean_error(result) and result.calls == 9
    assert [s["label"] for s in result.scores][0] == result.prediction
    assert {s["label"] for s in result.scores} == {"cat", "dog", "bird"}  # default labels: every class


def test_class_unet_eps_is_the_unet_output(unet_folder):
    from diffusers import UNet2DModel

    model = DiffusionClassifier.from_pretrained(unet_folder, device="cpu").model
    unet = UNet2DModel.from_pretrained(unet_folder, subfolder="unet")
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 700])
    cond = model.condition(["bird", "cat"])
    expected = unet(x_t, t, class_labels=torch.tensor([2, 0])).sample
    torch.testing.assert_close(model.predict_noise(x_t, t, cond), expected)


def test_class_unet_encode_is_grayscale_in_unit_range(unet_folder):
    model = DiffusionClassifier.from_pretrained(unet_folder, device="cpu").model
    img = Image.fromarray(np.full((8, 8), 255, dtype=np.uint8))
    torch.testing.assert_close(model.encode(img), torch.ones(1, 8, 8))
    assert model.encode(random_image((20, 16))).shape == (1, 8, 8)  # other sizes: resized and cropped


def test_class_unet_labels_by_name_and_id(unet_folder):
    model = DiffusionClassifier.from_pretrained(unet_folder, device="cpu").model
    assert model.condition(["dog", "0", "bird", "2"]).tolist() == [1, 0, 2, 2]
    with pytest.raises(UserInputError, match="unknown class 'horse'.*'cat'"):
        model.condition(["horse"])
    with pytest.raises(UserInputError):
        model.condition(["3"])  # an id beyond the classes


def test_class_unet_rejects_another_image_size(unet_folder):
    with pytest.raises(UserInputError, match="--image-size"):
        DiffusionClassifier.from_pretrained(unet_folder, device="cpu", image_size=16)


def test_default_schedule_from_config(tmp_path):
    from tiny_models import build_tiny_class_unet

    build_tiny_class_unet(tmp_path)
    config = json.loads((tmp_path / "classifier_config.json").read_text())
    config["default_schedule"] = {"timesteps": [250, 750], "loss": "l1"}
    (tmp_path / "classifier_config.json").write_text(json.dumps(config))
    clf = DiffusionClassifier.from_pretrained(tmp_path, device="cpu")
    result = clf(random_image((8, 8)))
    assert result.calls == 6 and result.errors["cat"]["timesteps"] == [250, 750]


# ---- DiT ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dit_folder(tiny_pipeline):
    return tiny_pipeline("dit")


def test_dit_eps_is_the_first_half_of_the_output(dit_folder):
    from diffusers import DiTTransformer2DModel

    model = DiffusionClassifier.from_pretrained(dit_folder, device="cpu").model
    assert isinstance(model, DiTModel) and model.latent_shape == (4, 4, 4) and model.image_size == 8
    transformer = DiTTransformer2DModel.from_pretrained(dit_folder, subfolder="transformer")
    use_original_dit(transformer)  # the adapter's default network (tests/test_dit.py checks it against the original)
    x_t, t = torch.randn(3, 4, 4, 4), torch.tensor([5, 500, 995])
    out = transformer(x_t, timestep=t, class_labels=torch.tensor([1, 4, 0])).sample
    assert out.shape == (3, 8, 4, 4)
    eps = model.predict_noise(x_t, t, model.condition(["goldfish", "king penguin", "tench, Tinca tinca"]))
    torch.testing.assert_close(eps, out[:, :4])


def test_dit_encode_is_the_scaled_posterior_mean_of_the_adm_crop(dit_folder):
    from diffusers import AutoencoderKL

    from diffusion_classifier.data.images import to_tensor

    model = DiffusionClassifier.from_pretrained(dit_folder, device="cpu").model
    vae = AutoencoderKL.from_pretrained(dit_folder, subfolder="vae")
    img = random_image((40, 20))
    with torch.no_grad():
        expected = vae.encode(to_tensor(adm_center_crop(img, 8))[None]).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(model.encode(img), expected[0])


def test_adm_center_crop_halves_then_resizes():
    img = random_image((70, 35))  # short side 35 >= 2 * 16: one BOX halving to 35x17, then bicubic to 16
    out = adm_center_crop(img, 16)
    assert out.size == (16, 16)
    halved = img.resize((35, 17), Image.Resampling.BOX).resize((33, 16), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(halved)[:, 8:24])


def test_dit_labels_by_name_synonym_and_id(dit_folder):
    model = DiffusionClassifier.from_pretrained(dit_folder, device="cpu").model
    assert model.class_names[0] == "tench, Tinca tinca" and len(model.class_names) == 5
    assert model.condition(["Tinca tinca", "tench", "crane", "crane, bird", "bird", "4"]).tolist() == [0, 0, 2, 3, 3, 4]
    with pytest.raises(UserInputError, match="unknown class 'shark'"):
        model.condition(["shark"])


def test_dit_classifies_among_given_labels(dit_folder):
    clf = DiffusionClassifier.from_pretrained(dit_folder, device="cpu")
    result = clf(random_image((12, 9)), labels=["goldfish", "3"], schedule=Full((100, 600)), batch_size=3)
    assert set(result.errors) == {"goldfish", "3"} and result.calls == 4
    assert result.prediction == lowest_mean_error(result)


# ---- MNIST split, training, the bundled model --------------------------------------------------------------


def test_mnist_split_is_fixed_and_balanced():
    from diffusion_classifier.data import mnist

    train_idx, test_idx = mnist.split_indices()
    assert len(train_idx) == 4000 and len(test_idx) == 1000
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(5000))
    test = mnist.test_split()
    assert np.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert np.bincount(mnist.train_split().labels, minlength=10).tolist() == [400] * 10
    assert np.array_equal(mnist.split_indices()[1], test_idx)  # deterministic
    assert not np.array_equal(mnist.split_indices(seed=1)[1], test_idx)
    assert test.images.dtype == np.uint8 and test.images.shape == (1000, 28, 28)
    images, labels = mnist.test_images()
    assert images[0].mode == "L" and images[0].size == (28, 28) and labels[:1] == [str(test.labels[0])]
    assert np.array_equal(np.asarray(images[7]), test.images[7])


def test_short_training_run_writes_a_loadable_folder(tmp_path):
    from diffusion_classifier.data.mnist import test_images
    from diffusion_classifier.training.train import TrainConfig, train

    cfg = TrainConfig(steps=2, batch_size=4, block_out_channels=(8, 16), save_every=1, warmup=1)
    train(tmp_path / "m", cfg, progress=False)
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "m" / "classifier_config.json").read_text())
    assert config["training"]["steps_done"] == 2 and config["class_names"] == [str(d) for d in range(10)]
    clf = DiffusionClassifier.from_pretrained(tmp_path / "m", device="cpu")
    images, _ = test_images()
    result = clf(images[0], schedule=Full((300, 600)), batch_size=20)
    assert result.prediction == lowest_mean_error(result) and result.calls == 20


def test_training_is_reproducible(tmp_path):
    from safetensors.torch import load_file

    from diffusion_classifier.training.train import TrainConfig, train

    cfg = TrainConfig(steps=2, batch_size=4, block_out_channels=(8, 16), warmup=1)
    weights = []
    for name in ("a", "b"):
        train(tmp_path / name, cfg, progress=False)
        weights.append(load_file(tmp_path / name / "unet" / "diffusion_pytorch_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_command(tmp_path):
    from diffusion_classifier.cli import main

    assert main(["train", "--out", str(tmp_path / "m"), "--steps", "1", "--batch-size", "2"]) == 0
    assert (tmp_path / "m" / "scheduler" / "scheduler_config.json").is_file()
    with pytest.raises(SystemExit) as exc:  # an argument error: argparse's one line, exit 2
        main(["train", "--out", str(tmp_path / "x"), "--steps", "0"])
    assert exc.value.code == 2


def test_builtin_mnist_classifies_held_out_digits():
    from diffusion_classifier.data.mnist import test_images

    clf = DiffusionClassifier.from_pretrained("builtin:mnist", device="cpu")
    assert clf.model.class_names == [str(d) for d in range(10)]
    images, labels = test_images()
    picks = range(0, 1000, 100)  # the first digit of each class
    schedule = Full(tuple(range(25, 1000, 50)))  # 20 timesteps
    correct = sum(clf(images[i], schedule=schedule, batch_size=200).prediction == labels[i] for i in picks)
    assert correct >= 9

"""The image loader and the official preprocessing: independent implementations of the published transforms,
odd image modes, 16/32-bit images, animations, decompression bombs, EXIF, and Winoground's path rules."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.cli import build_parser, main
from diffusion_classifier.cli.options import image_options_from_args
from diffusion_classifier.core.schedules import Full
from diffusion_classifier.data.datasets import open_dataset
from diffusion_classifier.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageOptions,
    center_crop,
    load_image,
    reference_transform,
    resize_short_side,
    to_tensor,
)
from diffusion_classifier.errors import UserInputError
from diffusion_classifier.matching.winoground import WinogroundConfig, open_winoground, run_winoground
from diffusion_classifier.runs.engine import RunStore
from official import official_dit_transform, official_sd_transform

SIZE = 16  # the tiny SD model's input size

# --- test images ---------------------------------------------------------------------------------------


def noise_rgba(size: tuple[int, int], seed: int) -> Image.Image:
    """Random colours and random alpha (0 and 255 included), so alpha premultiplication shows."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    arr[::3, :, 3] = 0
    arr[1::5, :, 3] = 255
    return Image.fromarray(arr, "RGBA")


def make_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    img = noise_rgba(size, seed)
    if mode == "P":
        return img.convert("RGB").quantize(64)
    if mode == "P+transparency":
        p = img.convert("RGB").quantize(64)
        p.info["transparency"] = 3
        return p
    return img.convert(mode) if mode != "RGBA" else img


MODES = ["RGB", "RGBA", "LA", "P", "P+transparency", "CMYK", "L"]
ODD_SIZES = [(37, 23), (19, 41), (16, 29), (11, 13)]  # landscape, portrait, no resize needed, upscaled


def saved(img: Image.Image, path) -> Image.Image:
    """img written to a lossless file (TIFF for CMYK, else PNG) and read back as it is on disk."""
    path = path.with_suffix(".tif" if img.mode == "CMYK" else ".png")
    kw = {"transparency": img.info["transparency"]} if "transparency" in img.info else {}
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", ODD_SIZES)
def test_sd_preprocessing_is_the_official_transform(mode, size, tmp_path):
    path = saved(make_image(mode, size, seed=size[0]), tmp_path / "img")
    ours = reference_transform(load_image(path), SIZE)
    with Image.open(path) as raw:
        assert load_image(path).mode == raw.mode  # kept in its own mode: RGB comes last
        expected = official_sd_transform(raw, SIZE)
    assert ours.dtype == torch.float32 and ours.shape == (3, SIZE, SIZE)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_converting_to_rgb_first_gives_other_pixels(mode):
    """The test above can fail: the package's former order (RGB, then resize) differs for these modes."""
    img = make_image(mode, (37, 23))
    rgb_first = to_tensor(center_crop(resize_short_side(img.convert("RGB"), SIZE), SIZE))
    assert not torch.equal(rgb_first, official_sd_transform(img, SIZE))
    assert not torch.equal(rgb_first, reference_transform(img, SIZE))


def test_sd_encode_runs_the_official_transform(tiny_sd_path, tmp_path):
    from diffusers import AutoencoderKL

    model = DiffusionClassifier.from_pretrained(tiny_sd_path, device="cpu").model
    vae = AutoencoderKL.from_pretrained(tiny_sd_path, subfolder="vae").eval()
    path = saved(make_image("RGBA", (37, 23)), tmp_path / "rgba")
    with torch.no_grad(), Image.open(path) as raw:
        expected = vae.encode(official_sd_transform(raw, SIZE)[None]).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(model.encode(path), expected[0])
    torch.testing.assert_close(model.encode(load_image(path)), expected[0])


@pytest.fixture(scope="module")
def dit_folder(tiny_pipeline):
    return tiny_pipeline("dit")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "CMYK", "L"])
def test_dit_preprocessing_is_the_official_adm_crop(dit_folder, mode, tmp_path):
    from diffusers import AutoencoderKL

    model = DiffusionClassifier.from_pretrained(dit_folder, device="cpu").model
    vae = AutoencoderKL.from_pretrained(dit_folder, subfolder="vae").eval()
    path = saved(make_image(mode, (40, 23), seed=1), tmp_path / "img")  # 23 >= 2 x 8: one BOX halving
    with torch.no_grad(), Image.open(path) as raw:
        x = official_dit_transform(raw, model.image_size)[None]
        expected = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(model.encode(path), expected[0])


# --- modes, depths, frames --------------------------------------------------------------------------------


def test_16_bit_grey_png_keeps_its_grey_levels(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 4).round().astype(np.uint16).reshape(4, 256)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as raw:
        assert raw.mode == "I;16"
        naive = np.asarray(raw.convert("L"))
    assert (naive == 255).mean() > 0.99  # PIL's own conversion clips: all but the darkest pixels turn white
    img = load_image(tmp_path / "ramp.png")
    arr = np.asarray(img).astype(int)
    assert img.mode == "L" and arr.min() == 0 and arr.max() == 255
    assert (np.diff(arr, axis=1) >= 0).all() and len(np.unique(arr)) == 256  # monotone, every level
    np.testing.assert_array_equal(arr, np.rint(ramp / 257.0))  # the 16-bit range maps onto 0..255
    assert reference_transform(img, SIZE).std() > 0.3  # through the SD transform: still a ramp


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_images_are_scaled_over_their_range(mode, tmp_path):
    values = np.linspace(-3.0, 1000.0, 64).reshape(8, 8)
    img = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32))
    assert img.mode == mode
    img.save(tmp_path / "deep.tif")
    arr = np.asarray(load_image(tmp_path / "deep.tif")).astype(int)
    assert arr.min() == 0 and arr.max() == 255 and (np.diff(arr.ravel()) >= 0).all()
    assert len(np.unique(arr)) == 64


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "1"])
def test_other_modes_load_in_their_own_mode(mode, tmp_path):
    img = make_image(mode, (9, 7))
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    img.save(path)
    loaded = load_image(path)
    assert loaded.mode == mode and loaded.size == (9, 7)
    assert reference_transform(loaded, SIZE).shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_images_give_their_first_frame(fmt, tmp_path):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (8, 6), c) for c in colours]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], lossless=True)
    with Image.open(path) as raw:
        assert getattr(raw, "n_frames", 1) == 3
    pixel = load_image(path).convert("RGB").getpixel((4, 3))
    assert max(abs(a - b) for a, b in zip(pixel, colours[0])) <= 4


# --- bad files ----------------------------------------------------------------------------------------


def bomb_png(path, side: int = 20000) -> None:
    """A 1-bit side x side PNG of zeros: about 48 KB on disk, side * side pixels when decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    bomb_png(path)
    assert path.stat().st_size < 100_000
    return path


def test_decompression_bomb_is_a_one_line_error_naming_the_image(bomb):
    pil_cap = Image.MAX_IMAGE_PIXELS
    with pytest.raises(UserInputError) as exc:
        load_image(bomb)
    msg = str(exc.value)
    assert "\n" not in msg and str(bomb) in msg and "400,000,000 pixels" in msg and "20000x20000" in msg
    assert "--max-image-pixels 400000000" in msg and "ImageOptions(max_pixels=" in msg
    assert pil_cap == Image.MAX_IMAGE_PIXELS  # PIL's global is left as it was
    assert 2 * pil_cap == DEFAULT_MAX_PIXELS  # the default is PIL's own hard limit


def test_raising_the_pixel_cap_lets_a_large_image_through(tmp_path):
    bomb_png(tmp_path / "big.png", side=3000)  # 9 M pixels, cheap to decode
    with pytest.raises(UserInputError, match="9,000,000 pixels"):
        load_image(tmp_path / "big.png", ImageOptions(max_pixels=8_999_999))
    img = load_image(tmp_path / "big.png", ImageOptions(max_pixels=9_000_000))
    assert img.size == (3000, 3000) and img.mode == "1"
    assert load_image(tmp_path / "big.png", ImageOptions(max_pixels=None)).size == (3000, 3000)
    with pytest.raises(UserInputError, match="--max-image-pixels must be a positive"):
        ImageOptions(max_pixels=0)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def classify_args(tiny_sd_path, *images):
    return ["classify", *images, "--model", tiny_sd_path, "--labels", "cat", "dog", "--timesteps", "500", "--json"]


def test_bomb_through_classify_fails_alone(tiny_sd_path, image_files, bomb, capsys):
    code, out, err = run_cli(capsys, *classify_args(tiny_sd_path, bomb))
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and "400,000,000 pixels" in err and "--max-image-pixels" in err
    code, out, err = run_cli(capsys, *classify_args(tiny_sd_path, bomb, image_files[0]))
    assert code == 1 and "Traceback" not in err and "400,000,000 pixels" in err
    assert [json.loads(line)["image"] for line in out.splitlines()] == [str(image_files[0])]


def test_raised_cap_through_classify(tiny_sd_path, tmp_path, capsys):
    bomb_png(tmp_path / "big.png", side=3000)
    code, _, err = run_cli(capsys, *classify_args(tiny_sd_path, tmp_path / "big.png"))
    assert code == 0 and err == ""  # 9 M pixels is under the default cap
    args = [*classify_args(tiny_sd_path, tmp_path / "big.png"), "--max-image-pixels", "1000000"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "9,000,000 pixels" in err and "--max-image-pixels 9000000" in err
    code, _, err = run_cli(capsys, *args[:-1], "9000000")
    assert code == 0 and err == ""


def test_a_bomb_in_a_dataset_fails_alone(tiny_sd_path, image_files, bomb, tmp_path, capsys):
    for label, src in (("cat", image_files[0]), ("dog", bomb)):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / f"x{src.suffix}").write_bytes(src.read_bytes())
    run_cli(capsys, "eval", "--dataset", f"folder:{tmp_path / 'data'}", "--out", tmp_path / "run",
            "--model", tiny_sd_path, "--timesteps", "500", "--exif-orientation")  # fmt: skip
    records = RunStore(tmp_path / "run").records()
    assert [records[i]["status"] for i in (0, 1)] == ["ok", "failed"]
    assert "400,000,000 pixels" in records[1]["error"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["exif_orientation"] is True


def test_a_bad_image_beside_good_ones_in_match_and_calibrate(tiny_sd_path, image_files, bomb, tmp_path, capsys):
    match = ["match", "--model", tiny_sd_path, "--captions", "a cat", "a dog", "--t-interval", "500", "--json"]
    code, out, err = run_cli(capsys, *match, "--images", bomb, image_files[0])
    assert code == 1 and "400,000,000 pixels" in err and "Traceback" not in err
    assert json.loads(out)["images"] == [str(image_files[0])]
    code, out, err = run_cli(capsys, *match, "--images", bomb, tmp_path)
    assert code == 2 and out == "" and "is a directory" in err and "400,000,000 pixels" in err  # a line each
    for label, srcs in (("cat", image_files[:2]), ("dog", [image_files[0], bomb])):
        (tmp_path / "data" / label).mkdir(parents=True)
        for k, src in enumerate(srcs):
            (tmp_path / "data" / label / f"{k}{src.suffix}").write_bytes(src.read_bytes())
    code, out, err = run_cli(capsys, "calibrate", "--model", tiny_sd_path, "--data", f"folder:{tmp_path / 'data'}",
                             "--per-class", "2", "--trials", "2", "--out", tmp_path / "w.json")  # fmt: skip
    assert code == 1 and "400,000,000 pixels" in err and "(3 images" in out and (tmp_path / "w.json").is_file()


def test_missing_directory_and_unreadable_images(tiny_sd_path, tmp_path, capsys):
    with pytest.raises(UserInputError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(UserInputError, match="image not found"):
        load_image(tmp_path / "absent.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(UserInputError, match="cannot read image .*junk.png"):
        load_image(tmp_path / "junk.png")
    buf = io.BytesIO()
    make_image("RGB", (40, 40)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UserInputError, match="cannot read image .*cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(UserInputError, match="cannot read image my cell"):
        load_image({"bytes": b"junk", "path": None}, name="my cell")
    code, _, err = run_cli(capsys, *classify_args(tiny_sd_path, tmp_path))
    assert code == 2 and f"{tmp_path} is a directory" in err and "Traceback" not in err


def test_an_extremely_elongated_image_is_refused_before_the_resize(tiny_sd_path, dit_folder):
    strip = Image.new("L", (1, 5_000_000))  # 5 MB; scaled to 8 px wide (DiT) it would be 320 M pixels
    for folder in (tiny_sd_path, dit_folder):
        model = DiffusionClassifier.from_pretrained(folder, device="cpu").model
        with pytest.raises(UserInputError, match="too elongated"):
            model.encode(strip)
    assert reference_transform(Image.new("L", (4, 3000)), SIZE).shape == (3, SIZE, SIZE)  # 16 x 12,000: fine


def test_cells_and_bytes_decode_in_their_own_mode_and_datasets_in_rgb_as_torchvision(tmp_path):
    buf = io.BytesIO()
    make_image("LA", (5, 4)).save(buf, "PNG")
    assert load_image(buf.getvalue()).mode == "LA"
    assert load_image({"bytes": buf.getvalue(), "path": "x.png"}).mode == "LA"
    (tmp_path / "a").mkdir()
    palette = make_image("P", (5, 4))
    palette.save(tmp_path / "a" / "p.png")
    # the official runs read datasets through torchvision, whose loaders convert to RGB at open
    image = open_dataset(f"folder:{tmp_path}").image(0)
    assert image.mode == "RGB" and image.tobytes() == palette.convert("RGB").tobytes()


# --- EXIF orientation ------------------------------------------------------------------------------------


@pytest.fixture
def rotated_jpeg(tmp_path):
    """A 30x20 JPEG whose EXIF says: rotate 90 degrees clockwise to display (Orientation 6)."""
    img = Image.fromarray(np.kron(np.arange(6, dtype=np.uint8).reshape(2, 3) * 40, np.ones((10, 10), np.uint8)))
    exif = img.getexif()
    exif[0x0112] = 6
    img.convert("RGB").save(tmp_path / "rot.jpg", exif=exif, quality=95)
    return tmp_path / "rot.jpg"


def test_exif_orientation_is_ignored_by_default_and_honoured_on_request(rotated_jpeg):
    assert load_image(rotated_jpeg).size == (30, 20)  # the official behaviour: the stored pixels
    turned = load_image(rotated_jpeg, ImageOptions(exif_orientation=True))
    assert turned.size == (20, 30)
    with Image.open(rotated_jpeg) as raw:
        np.testing.assert_array_equal(np.asarray(turned), np.asarray(ImageOps.exif_transpose(raw)))


def test_classifier_honours_exif_orientation_when_asked(tiny_sd_path, rotated_jpeg):
    clf = DiffusionClassifier.from_pretrained(tiny_sd_path, device="cpu")
    kw = {"labels": ["cat", "dog"], "schedule": Full((300, 700))}
    with Image.open(rotated_jpeg) as raw:
        upright = clf(ImageOps.exif_transpose(raw), **kw).scores
        stored = clf(raw.copy(), **kw).scores
    assert clf(rotated_jpeg, **kw).scores == stored
    assert clf(rotated_jpeg, image_options=ImageOptions(exif_orientation=True), **kw).scores == upright
    assert upright != stored


@pytest.mark.parametrize("command", ["classify", "eval", "match", "winoground", "calibrate"])
def test_every_image_command_takes_the_image_options(command):
    required = {
        "classify": ["x.png", "--model", "m"],
        "eval": ["--dataset", "d", "--out", "o"],
        "match": ["--images", "x.png", "--captions", "c"],
        "winoground": [],
        "calibrate": ["--model", "m", "--data", "d", "--out", "o"],
    }[command]
    args = build_parser().parse_args([command, *required, "--max-image-pixels", "123", "--exif-orientation"])
    assert image_options_from_args(args) == ImageOptions(max_pixels=123, exif_orientation=True)
    default = build_parser().parse_args([command, *required])
    assert image_options_from_args(default) == ImageOptions()


# --- Winoground's examples.jsonl may not leave its images folder ---------------------------------------------


class MeanBrightness:
    """A PairScorer that scores every pair by the image's mean brightness (enough to run examples)."""

    name = "brightness"

    def __call__(self, images, captions):
        means = torch.tensor([float(np.asarray(img.convert("L")).mean()) for img in images], dtype=torch.float64)
        return means[:, None].expand(len(images), len(captions)).clone()

    def describe(self):
        return {"scorer": self.name}


def test_winoground_paths_cannot_escape_the_images_folder(tmp_path):
    root, outside = tmp_path / "wino", tmp_path / "elsewhere"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    for name in ("a", "b"):
        make_image("RGB", (12, 10)).save(root / "images" / f"{name}.png")
    make_image("RGB", (12, 10)).save(root / "secret.png")  # inside the data folder, outside images/
    make_image("RGB", (12, 10)).save(outside / "photo.png")
    (root / "images" / "link.png").symlink_to(outside / "photo.png")
    bad = ["../secret", str(outside / "photo.png"), "link.png", "sub/../../secret.png"]
    rows = [("a", "b"), *[("a", name) for name in bad]]
    text = {"caption_0": "x", "caption_1": "y", "collapsed_tag": "Object"}
    lines = [json.dumps({"id": i, "image_0": i0, "image_1": i1, **text}) for i, (i0, i1) in enumerate(rows)]
    (root / "examples.jsonl").write_text("\n".join(lines) + "\n")
    data = open_winoground(root)
    assert [img.size for img in data.images(0)] == [(12, 10), (12, 10)]
    for i in range(1, len(rows)):
        with pytest.raises(UserInputError, match="refused") as exc:
            data.images(i)
        assert "\n" not in str(exc.value)
    _, records = run_winoground(data, lambda: [MeanBrightness()])
    assert [records[i]["status"] for i in range(len(rows))] == ["ok"] + ["failed"] * len(bad)
    assert all("refused" in records[i]["error"] for i in range(1, len(rows)))


def test_winoground_with_no_usable_example_is_refused_at_once(tmp_path):
    (tmp_path / "images").mkdir()
    row = {"id": 0, "caption_0": "a", "caption_1": "b", "image_0": "/etc/passwd", "image_1": "x"}
    (tmp_path / "examples.jsonl").write_text(json.dumps({**row, "collapsed_tag": "Object"}) + "\n")
    with pytest.raises(UserInputError, match="no Winoground example has its two images: .*refused"):
        open_winoground(tmp_path)


def test_winoground_runs_without_the_exif_field_still_resume(tmp_path):
    store = RunStore(tmp_path, WinogroundConfig)
    config = WinogroundConfig(data="d", examples=3, scorers=("clip:x",))
    old = {k: v for k, v in config.to_dict().items() if k != "exif_orientation"}  # written before the field
    tmp_path.joinpath("config.json").write_text(json.dumps(old))
    store.claim(config)  # same run: resumes
    with pytest.raises(UserInputError, match="exif_orientation"):
        store.claim(WinogroundConfig(data="d", examples=3, scorers=("clip:x",), exif_orientation=True))

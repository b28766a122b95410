"""The probe of issue #12: about 150 bad (and a few good) inputs across every command, written from the README,
docs/ and --help alone, as a demanding new user would try them.

Every case is checked for the rule README states: no traceback, exactly the rule's exit code (0 all done,
1 some inputs failed, 2 nothing done or a usage error, 130 interrupted), each problem one line on stderr,
stdout of --json standard JSON line by line; and, where it applies, integrity (no duplicate or lost records,
no mixed datasets) and security (nothing unpickled: a pickle whose load would create a marker never does).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier.cli import main
from tiny_models import build_tiny_class_unet

SRC = str(Path(__file__).resolve().parent.parent / "src")
PREFIX = "diffusion-classifier"
#: what a traceback or a multi-line message leaves on stderr
TRACE = re.compile(r'Traceback|^\s+File "|^\s|warnings\.warn\(|^\w+(Error|Exception|Warning): ')
CUDA = torch.cuda.is_available()
MPS = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


# --- a pickle that would leave a marker if anything unpickled it ----------------------------------------


class Marker:
    """Unpickling this calls os.mkdir(path): the marker exists only if someone loaded a pickle."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# --- the files a user might pass -------------------------------------------------------------------------


def png_bomb(path: Path, side: int = 20000) -> None:
    """A 1-bit PNG of side x side zeros, written chunk by chunk: ~48 KB on disk, 400 MB decoded (as 8-bit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def grey(path: Path, seed: int = 0, size=(28, 28)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=size[::-1], dtype=np.uint8), "L").save(path)
    return path


def rgb(seed: int = 0, size=(20, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


def image_files(d: Path) -> dict[str, Path]:
    d.mkdir()
    f = {"digit0": grey(d / "digit0.png", 0), "digit1": grey(d / "digit1.png", 1)}
    f["missing"] = d / "missing.png"
    f["dir"] = d / "folder.png"
    f["dir"].mkdir()
    f["empty"] = d / "empty.png"
    f["empty"].write_bytes(b"")
    f["text"] = d / "notes.png"
    f["text"].write_text("this is not an image\n")
    buf = io.BytesIO()
    rgb(1, (64, 64)).save(buf, "PNG")
    f["truncated"] = d / "truncated.png"
    f["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    f["bomb"] = d / "bomb.png"
    png_bomb(f["bomb"])
    f["big"] = grey(d / "big.png", 2, (1200, 1000))  # 1.2 M pixels
    arr16 = (np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 83).astype(np.uint16)
    f["grey16"] = d / "grey16.png"
    Image.fromarray(arr16, "I;16").save(f["grey16"])
    f["float32"] = d / "float32.tiff"
    Image.fromarray(np.linspace(-3, 7, 28 * 28, dtype=np.float32).reshape(28, 28), "F").save(f["float32"])
    nan = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    nan[3, 3] = np.nan
    f["float_nan"] = d / "float_nan.tiff"
    Image.fromarray(nan, "F").save(f["float_nan"])
    f["int32"] = d / "int32.tiff"
    Image.fromarray((np.arange(28 * 28, dtype=np.int32) * 1000).reshape(28, 28), "I").save(f["int32"])
    f["palette"] = d / "palette.png"
    rgb(2).convert("P").save(f["palette"])
    f["palette_t"] = d / "palette_t.png"
    rgb(3).convert("P").save(f["palette_t"], transparency=0)
    f["la"] = d / "la.png"
    rgb(4).convert("LA").save(f["la"])
    f["rgba"] = d / "rgba.png"
    rgb(5).convert("RGBA").save(f["rgba"])
    f["cmyk"] = d / "cmyk.jpg"
    rgb(6).convert("CMYK").save(f["cmyk"])
    f["onebit"] = d / "onebit.png"
    rgb(7).convert("1").save(f["onebit"])
    f["gif"] = d / "anim.gif"
    frames = [rgb(i).convert("P") for i in range(3)]
    frames[0].save(f["gif"], save_all=True, append_images=frames[1:], duration=50, loop=0)
    f["webp"] = d / "anim.webp"
    frames[0].convert("RGB").save(f["webp"], save_all=True, append_images=[x.convert("RGB") for x in frames[1:]])
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90
    f["exif"] = d / "exif.jpg"
    rgb(8, (30, 20)).save(f["exif"], exif=exif)
    f["unicode"] = d / "ünï cödé 数字 ³.png"
    grey(f["unicode"], 9)
    f["tiny"] = d / "one_pixel.png"
    rgb(10, (1, 1)).save(f["tiny"])
    f["wide"] = d / "wide.png"
    rgb(11, (3000, 2)).save(f["wide"])
    f["png_as_jpg"] = d / "really_a_png.jpg"
    rgb(12).save(f["png_as_jpg"], "PNG")
    f["broken_link"] = d / "broken_link.png"
    f["broken_link"].symlink_to(d / "nowhere.png")
    f["link"] = d / "link.png"
    f["link"].symlink_to(f["digit0"])
    f["noperm"] = grey(d / "noperm.png", 13)
    f["noperm"].chmod(0)
    return f


def text_files(d: Path) -> dict[str, Path]:
    d.mkdir()
    f = {}

    def put(name: str, data: bytes | str) -> None:
        f[name] = d / name
        f[name].write_bytes(data.encode() if isinstance(data, str) else data)

    put("labels_latin1.txt", "café\nthé\n".encode("latin-1"))
    put("labels_empty.txt", b"")
    put("labels_blank_middle.txt", "cat\n\ndog\n")
    put("labels_bom_crlf.txt", "\ufeffcat\r\ndog\r\n")
    put("labels_dup.txt", "cat\ndog\ncat\n")
    put("labels_binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    put("prompts_nohead.csv", "a photo of a cat.,cat,0\na photo of a dog.,dog,1\n")
    put("prompts_short.csv", "prompt,classname,classidx\na photo of a cat.,cat,0\na photo of a dog.\n")
    put("prompts_badidx.csv", "prompt,classname,classidx\na photo of a cat.,cat,x\na photo of a dog.,dog,1\n")
    put("prompts_latin1.csv", "prompt,classname,classidx\na photo of a café.,café,0\n".encode("latin-1"))
    put("prompts_headonly.csv", "prompt,classname,classidx\n")
    put("prompts_emptyname.csv", "prompt,classname,classidx\na photo of a cat.,,0\na photo of a dog.,dog,1\n")
    put("prompts_ok.csv", "\ufeffprompt,classname,classidx\r\na photo of a cat.,cat,0\r\na photo of a dog.,dog,1\r\n")
    put("prompts_binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    put("weights_bad.json", "{not json")
    put("weights_list.json", "[1, 2, 3]")
    put("weights_nan.json", '{"edges": [0, 500, 1000], "values": [NaN, 1.0]}')
    return f


def noise_files(d: Path, markers: Path) -> dict[str, Path]:
    """Noise for builtin:mnist ([N, 1, 28, 28]) and the tiny SD ([N, 4, 8, 8]), good and bad."""
    d.mkdir()
    f = {}
    g = torch.Generator().manual_seed(0)
    good = torch.randn(8, 1, 28, 28, generator=g)
    f["ok_pt"] = d / "ok.pt"
    torch.save(good, f["ok_pt"])
    f["ok_npy"] = d / "ok.npy"
    np.save(f["ok_npy"], good.double().numpy())
    f["ok_f16"] = d / "ok16.npy"
    np.save(f["ok_f16"], good.half().numpy())
    f["nan_pt"] = d / "nan.pt"
    torch.save(good.clone().index_fill_(0, torch.tensor([1]), float("nan")), f["nan_pt"])
    inf = good.numpy().copy()
    inf[2, 0, 5, 5] = np.inf
    f["inf_npy"] = d / "inf.npy"
    np.save(f["inf_npy"], inf)
    f["int_pt"] = d / "int.pt"
    torch.save(torch.zeros(8, 1, 28, 28, dtype=torch.int64), f["int_pt"])
    f["flat_pt"] = d / "flat.pt"
    torch.save(torch.randn(100), f["flat_pt"])
    f["few_pt"] = d / "few.pt"
    torch.save(good[:2].clone(), f["few_pt"])
    f["small_pt"] = d / "small.pt"
    torch.save(torch.randn(8, 1, 8, 8), f["small_pt"])
    f["empty_pt"] = d / "empty.pt"
    f["empty_pt"].write_bytes(b"")
    f["text_pt"] = d / "text.pt"
    f["text_pt"].write_text("0.1 0.2 0.3\n")
    f["dir_pt"] = d / "dir.pt"
    f["dir_pt"].mkdir()
    f["dict_pt"] = d / "dict.pt"
    torch.save({"noise": good}, f["dict_pt"])
    f["txt"] = d / "noise.txt"
    f["txt"].write_text("0.5\n")
    f["evil_pt"] = d / "evil.pt"
    torch.save({"noise": Marker(markers / "noise-pt")}, f["evil_pt"])
    f["evil_raw_pt"] = d / "evil_raw.pt"
    f["evil_raw_pt"].write_bytes(pickle.dumps(Marker(markers / "noise-raw-pt")))
    f["evil_npy"] = d / "evil.npy"
    np.save(f["evil_npy"], np.array([Marker(markers / "noise-npy")], dtype=object), allow_pickle=True)
    f["sd_ok"] = d / "sd_ok.pt"
    torch.save(torch.randn(8, 4, 8, 8, generator=g), f["sd_ok"])
    f["sd_nan"] = d / "sd_nan.pt"
    torch.save(torch.full((8, 4, 8, 8), float("nan")), f["sd_nan"])
    f["sd_3ch"] = d / "sd_3ch.pt"
    torch.save(torch.randn(8, 3, 8, 8), f["sd_3ch"])
    return f


def subset_files(d: Path, markers: Path) -> dict[str, Path]:
    d.mkdir()
    f = {}

    def put(name: str, text: str) -> None:
        f[name] = d / name
        f[name].write_text(text)

    put("ok.txt", "0, 2\n")
    put("strings.json", '["a", "b"]')
    put("range.json", "[0, 99999]")
    put("negative.txt", "-1 0")
    put("empty.txt", "")
    put("floats.txt", "0.5 1.5")
    put("object.json", '{"indices": [0]}')
    f["evil_npy"] = d / "evil.npy"
    np.save(f["evil_npy"], np.array([Marker(markers / "subset-npy")], dtype=object), allow_pickle=True)
    f["evil_pt"] = d / "evil.pt"
    torch.save([Marker(markers / "subset-pt")], f["evil_pt"])
    f["float_npy"] = d / "float.npy"
    np.save(f["float_npy"], np.array([0.5, 1.0]))
    return f


def class_folder(d: Path, classes=("3", "8"), per_class: int = 2, bad: int = 0, seed: int = 0) -> Path:
    """folder:PATH layout: one subfolder per class; the first `bad` files are not images."""
    k = 0
    for c in classes:
        (d / c).mkdir(parents=True)
        for i in range(per_class):
            p = d / c / f"{i}.png"
            if k < bad:
                p.write_text("not an image")
            else:
                grey(p, seed + k)
            k += 1
    return d


def wino_folder(d: Path, image_0: str | None = None, lines: list[str] | None = None) -> Path:
    """Winoground in its release layout: examples.jsonl + images/NAME.png, two examples."""
    (d / "images").mkdir(parents=True)
    rows = []
    for i in range(2):
        for j in range(2):
            rgb(20 + 2 * i + j, (24, 24)).save(d / "images" / f"ex_{i}_img_{j}.png")
        rows.append(
            {
                "id": i,
                "caption_0": f"a dog on a sofa {i}",
                "caption_1": f"a sofa on a dog {i}",
                "image_0": f"ex_{i}_img_0",
                "image_1": f"ex_{i}_img_1",
                "tag": "Object",
                "secondary_tag": "",
                "num_main_preds": 1,
                "collapsed_tag": "Object",
            }
        )
    if image_0 is not None:
        rows[0]["image_0"] = image_0
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if lines is not None:
        text = "\n".join(lines) + "\n"
    (d / "examples.jsonl").write_text(text)
    return d


def fifo(w: World) -> Path:
    """A named pipe: opening it would wait for a writer forever."""
    path = w.root / "pipe.png"
    if not path.exists():
        os.mkfifo(path)
    return path


def junk_folder(w: World) -> Path:
    """A class folder as users have them: hidden files, notes and an empty subfolder beside the images."""
    d = w.root / "junk"
    if not d.exists():
        class_folder(d)
        (d / "3" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (d / "8" / "notes.txt").write_text("taken on a phone\n")
        (d / "8" / "empty").mkdir()
    return d


def unicode_folder(w: World) -> Path:
    d = w.root / "unicode_classes"
    if not d.exists():
        class_folder(d, classes=("猫", "chien à poil"), per_class=1)
    return d


def escape_link(w: World) -> Path:
    """A Winoground copy whose first image is a symlink to a file outside its folder."""
    d = wino_folder(w.root / "wino_link")
    (d / "images" / "ex_0_img_0.png").unlink()
    (d / "images" / "ex_0_img_0.png").symlink_to(w.img["rgba"])
    return d


def all_escape(w: World) -> Path:
    rows = [json.loads(x) for x in (w.wino / "examples.jsonl").read_text().splitlines()]
    d = w.root / "wino_all_escape"
    (d / "images").mkdir(parents=True)
    lines = [json.dumps({**r, "image_0": "../../x", "image_1": "/etc/hostname"}) for r in rows]
    (d / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return d


def model_copies(d: Path, sd: Path, cu: Path, markers: Path) -> dict[str, Path]:
    """Model folders a user could point --model at: broken configs, pickle-only weights."""
    d.mkdir()
    f = {}

    def sd_copy(name: str) -> Path:
        f[name] = d / name
        shutil.copytree(sd, f[name], ignore=shutil.ignore_patterns("tokenizer_src"))
        return f[name]

    def cu_copy(name: str) -> Path:
        f[name] = d / name
        shutil.copytree(cu, f[name])
        return f[name]

    (sd_copy("index_list") / "model_index.json").write_text("[1, 2]")
    (sd_copy("index_bad") / "model_index.json").write_text('{"_class_name": ')
    (sd_copy("unet_list") / "unet" / "config.json").write_text('["UNet2DConditionModel"]')
    (sd_copy("sched_bad") / "scheduler" / "scheduler_config.json").write_text("{,}")
    (cu_copy("cu_list") / "classifier_config.json").write_text('["cat", "dog"]')
    cfg = json.loads((cu / "classifier_config.json").read_text())
    (cu_copy("cu_str") / "classifier_config.json").write_text(json.dumps({**cfg, "class_names": "cat dog bird"}))
    (cu_copy("cu_none") / "classifier_config.json").write_text(json.dumps({**cfg, "class_names": []}))
    (cu_copy("cu_size") / "classifier_config.json").write_text(json.dumps({**cfg, "image_size": "big"}))
    # weights only as pickles (.bin / .ckpt): never loaded by default
    for name, weights in [("sd_bin", "diffusion_pytorch_model.bin"), ("sd_ckpt", "diffusion_pytorch_model.ckpt")]:
        unet = sd_copy(name) / "unet"
        for p in unet.glob("*.safetensors"):
            p.unlink()
        torch.save({"w": Marker(markers / f"model-{name}")}, unet / weights)
    unet = cu_copy("cu_bin") / "unet"
    for p in unet.glob("*.safetensors"):
        p.unlink()
    torch.save({"w": Marker(markers / "model-cu_bin")}, unet / "diffusion_pytorch_model.bin")
    f["unet_bin"] = d / "unet_bin"
    shutil.copytree(sd / "unet", f["unet_bin"])
    for p in f["unet_bin"].glob("*.safetensors"):
        p.unlink()
    torch.save({"w": Marker(markers / "model-unet_bin")}, f["unet_bin"] / "diffusion_pytorch_model.bin")
    f["lora_bin"] = d / "lora_bin"
    f["lora_bin"].mkdir()
    torch.save({"w": Marker(markers / "model-lora_bin")}, f["lora_bin"] / "pytorch_lora_weights.bin")
    f["empty"] = d / "empty_model"
    f["empty"].mkdir()
    f["file"] = d / "model.safetensors"
    f["file"].write_bytes(b"\x00" * 16)
    f["fake_safetensors"] = d / "fake_st"
    shutil.copytree(cu, f["fake_safetensors"])
    for p in (f["fake_safetensors"] / "unet").glob("*.safetensors"):
        p.write_bytes(pickle.dumps(Marker(markers / "model-fake_st")))
    return f


@dataclass
class World:
    root: Path
    markers: Path
    img: dict
    txt: dict
    noise: dict
    subset: dict
    models: dict
    sd: Path
    cu: Path
    fold: Path
    fold_bad: Path
    fold_allbad: Path
    fold_catdog: Path
    wino: Path
    a_file: Path

    @property
    def mnist(self) -> list:
        return ["--model", "builtin:mnist", "--timesteps", "500", "--device", "cpu"]

    @property
    def mnist3(self) -> list:  # three trials, for noise files
        return ["--model", "builtin:mnist", "--labels", "3", "8", "--timesteps", "100,500,900", "--device", "cpu"]

    def sdc(self, *labels: str) -> list:
        labels = labels or ("cat", "dog")
        return ["--model", self.sd, "--labels", *labels, "--timesteps", "500", "--device", "cpu"]

    def wino_argv(self, data: Path | None = None) -> list:
        return ["winoground", "--model", self.sd, "--data-dir", data or self.wino, "--t-interval", "500"]

    def match_argv(self, *images) -> list:
        images = images or (self.img["digit0"], self.img["rgba"])
        return ["match", "--model", self.sd, "--images", *images, "--captions", "a dog", "a cat", "--t-interval", "500"]

    def calib(self, out: str = "w.json", data: Path | None = None) -> list:
        data = data or self.fold
        return ["calibrate", "--model", "builtin:mnist", "--data", f"folder:{data}", "--per-class", "1"] + [
            "--trials",
            "4",
            "--out",
            out,
            "--device",
            "cpu",
        ]

    def ev(self, out: str = "run", dataset: str | None = None) -> list:
        return ["eval", "--dataset", dataset or f"folder:{self.fold}", "--out", out, *self.mnist]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_sd_path) -> World:
    root = tmp_path_factory.mktemp("probe")
    markers = root / "markers"
    markers.mkdir()
    cu = root / "class-unet"
    build_tiny_class_unet(cu)
    a_file = root / "a_file.txt"
    a_file.write_text("I am a file\n")
    return World(
        root=root,
        markers=markers,
        img=image_files(root / "img"),
        txt=text_files(root / "txt"),
        noise=noise_files(root / "noise", markers),
        subset=subset_files(root / "subset", markers),
        models=model_copies(root / "models", tiny_sd_path, cu, markers),
        sd=tiny_sd_path,
        cu=cu,
        fold=class_folder(root / "fold"),
        fold_bad=class_folder(root / "fold_bad", bad=1),
        fold_allbad=class_folder(root / "fold_allbad", bad=4),
        fold_catdog=class_folder(root / "fold_catdog", classes=("cat", "dog"), per_class=1),
        wino=wino_folder(root / "wino"),
        a_file=a_file,
    )


# --- running a command and checking the rule ------------------------------------------------------------


def run(argv: list, capfd) -> tuple[int, str, str]:
    """main(argv) as the console script runs it; an exception escaping main is a traceback: the test fails.

    Warnings are shown on stderr as Python shows them outside pytest (which would otherwise swallow them).
    """
    kept = logging.root.handlers[:]  # pytest's own: without them main's basicConfig logs to stderr, as it does
    for handler in kept:
        logging.root.removeHandler(handler)
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", quiet)
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's own exits (--help, usage errors)
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        finally:
            for handler in logging.root.handlers[:]:
                logging.root.removeHandler(handler)
            for handler in kept:
                logging.root.addHandler(handler)
    out, err = capfd.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in shown)
    return code, out, err


def strict_loads(text: str):
    """json.loads refusing NaN and +-Infinity, which standard JSON does not have."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def check_rule(argv: list, code: int, out: str, err: str, expected: int, say: str | None = None) -> None:
    assert "Traceback" not in err, err
    assert "unexpected " not in err, f"an ordinary mistake fell through to the last resort: {err}"
    assert code == expected, f"exit {code}, expected {expected}; stderr:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    for line in lines:  # every problem (and note) is one line: no continuation, no raw Python error
        assert not TRACE.search(line), f"not a one-line message: {line!r} in\n{err}"
    if expected in (1, 2):
        problems = [line for line in lines if line.startswith(PREFIX) and "error" in line]
        assert problems, f"no error line on stderr:\n{err}"
        assert all(len(line) < 500 for line in problems), problems
    if say is not None:
        assert say.lower() in err.lower(), f"{say!r} not in {err!r}"
    assert not re.search(r"\b(nan|NaN|inf|Infinity)\b", out), f"a non-number in the output:\n{out}"
    if "--json" in [str(a) for a in argv]:
        for line in out.splitlines():
            if line.strip():
                strict_loads(line)
    if expected == 0 and "-q" in [str(a) for a in argv]:
        assert err == "", err


def records(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(run_dir.glob("records-rank*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(strict_loads(line))
    return rows


def check_integrity(run_dir: Path, expected: int | None = None, failed: int = 0) -> list[dict]:
    """No image recorded ok twice; an ok record wins over failed ones; `expected` distinct images in all."""
    rows = records(run_dir)
    ok = [r["index"] for r in rows if r.get("status", "ok") == "ok"]
    assert len(ok) == len(set(ok)), f"duplicate records: {sorted(ok)}"
    bad = {r["index"] for r in rows if r.get("status") == "failed"} - set(ok)
    assert len(bad) == failed, rows
    if expected is not None:
        assert len(set(ok)) + len(bad) == expected, (ok, bad)
    return rows


def no_markers(world: World) -> None:
    assert list(world.markers.iterdir()) == [], "a pickle was loaded"


# --- the table of cases: (category/what, argv, exit code, a word the message must say) ---------------------


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[World], list]
    code: int
    say: str | None = None
    skip: str | None = None


def C(id, argv, code, say=None, skip=None) -> Case:
    return Case(id, argv, code, say, skip)


CL = "classify"
CASES = [
    # 1. images
    C("images/missing", lambda w: [CL, w.img["missing"], *w.mnist], 2, "not found"),
    C("images/directory", lambda w: [CL, w.img["dir"], *w.mnist], 2, "directory"),
    C("images/empty-file", lambda w: [CL, w.img["empty"], *w.mnist], 2),
    C("images/text-as-png", lambda w: [CL, w.img["text"], *w.mnist], 2),
    C("images/truncated", lambda w: [CL, w.img["truncated"], *w.sdc()], 2),
    C("images/bomb", lambda w: [CL, w.img["bomb"], *w.mnist], 2, "--max-image-pixels"),
    C("images/bomb-among-good", lambda w: [CL, w.img["bomb"], w.img["digit0"], *w.mnist, "--json"], 1),
    C("images/over-cap", lambda w: [CL, w.img["big"], *w.mnist, "--max-image-pixels", "1000000"], 2, "pixels"),
    C("images/cap-raised", lambda w: [CL, w.img["big"], *w.mnist, "--max-image-pixels", "2000000"], 0),
    C("images/cap-negative", lambda w: [CL, w.img["digit0"], *w.mnist, "--max-image-pixels=-5"], 2),
    C("images/cap-word", lambda w: [CL, w.img["digit0"], *w.mnist, "--max-image-pixels", "lots"], 2),
    C("images/16-bit", lambda w: [CL, w.img["grey16"], *w.mnist], 0),
    C("images/float32", lambda w: [CL, w.img["float32"], *w.mnist], 0),
    C("images/float-nan", lambda w: [CL, w.img["float_nan"], *w.mnist, "--json"], 0),
    C("images/int32", lambda w: [CL, w.img["int32"], *w.sdc()], 0),
    C("images/palette", lambda w: [CL, w.img["palette"], *w.sdc()], 0),
    C("images/palette-transparent", lambda w: [CL, w.img["palette_t"], *w.mnist], 0),
    C("images/LA", lambda w: [CL, w.img["la"], *w.mnist], 0),
    C("images/RGBA", lambda w: [CL, w.img["rgba"], *w.sdc()], 0),
    C("images/CMYK", lambda w: [CL, w.img["cmyk"], *w.sdc()], 0),
    C("images/1-bit", lambda w: [CL, w.img["onebit"], *w.mnist], 0),
    C("images/animated-gif", lambda w: [CL, w.img["gif"], *w.sdc()], 0),
    C("images/animated-webp", lambda w: [CL, w.img["webp"], *w.mnist], 0),
    C("images/exif-honoured", lambda w: [CL, w.img["exif"], *w.sdc(), "--exif-orientation"], 0),
    C("images/unicode-name", lambda w: [CL, w.img["unicode"], *w.mnist, "--json"], 0),
    C("images/one-pixel-sd", lambda w: [CL, w.img["tiny"], *w.sdc()], 0),
    C("images/one-pixel-mnist", lambda w: [CL, w.img["tiny"], *w.mnist], 0),
    C("images/3000x2", lambda w: [CL, w.img["wide"], *w.sdc()], 0),
    C("images/png-named-jpg", lambda w: [CL, w.img["png_as_jpg"], *w.mnist], 0),
    C("images/symlink", lambda w: [CL, w.img["link"], *w.mnist], 0),
    C("images/broken-symlink", lambda w: [CL, w.img["broken_link"], *w.mnist], 2),
    C("images/no-permission", lambda w: [CL, w.img["noperm"], *w.mnist], 2, skip="root reads anything"),
    C("images/twice", lambda w: [CL, w.img["digit0"], w.img["digit0"], *w.mnist, "--json"], 0),
    C("images/all-bad", lambda w: [CL, w.img["empty"], w.img["dir"], w.img["missing"], *w.mnist], 2),
    C("images/match-one-bad", lambda w: w.match_argv(w.img["digit0"], w.img["text"]), 1),
    C("images/match-all-bad", lambda w: w.match_argv(w.img["text"], w.img["missing"]), 2),
    C("images/eval-one-bad", lambda w: w.ev("run", f"folder:{w.fold_bad}"), 1),
    C("images/eval-all-bad", lambda w: w.ev("run", f"folder:{w.fold_allbad}"), 2),
    C("images/calibrate-one-bad", lambda w: [*w.calib("w.json", w.fold_bad), "--per-class", "2"], 1),
    C("images/url", lambda w: [CL, "https://example.com/cat.png", *w.mnist], 2, "not found"),
    C("images/device-file", lambda w: [CL, "/dev/null", *w.mnist], 2, "not a regular file"),
    C("images/fifo", lambda w: [CL, fifo(w), *w.mnist], 2, "not a regular file"),
    C("images/stdin-dash", lambda w: [CL, "-", *w.mnist], 2),
    C("images/eval-folder-with-junk", lambda w: w.ev("run", f"folder:{junk_folder(w)}"), 0),
    # 2. labels, templates, prompt files
    C("labels/empty-label", lambda w: [CL, w.img["rgba"], *w.sdc("cat", "")], 2),
    C("labels/duplicate", lambda w: [CL, w.img["rgba"], *w.sdc("cat", "cat")], 2),
    C("labels/7-and-07", lambda w: [CL, w.img["digit0"], *w.mnist, "--labels", "7", "07"], 2),
    C("labels/superscript-digit", lambda w: [CL, w.img["digit0"], *w.mnist, "--labels", "3", "³"], 2),
    C("labels/not-a-class", lambda w: [CL, w.img["digit0"], *w.mnist, "--labels", "3", "10"], 2),
    C("labels/negative-class", lambda w: [CL, w.img["digit0"], *w.mnist, "--labels", "3", "-1"], 2),
    C("labels/class-name-case", lambda w: [CL, w.img["digit0"], "--model", w.cu, "--labels", "Cat", "dog"], 2),
    C("labels/long-class-label", lambda w: [CL, w.img["digit0"], *w.mnist, "--labels", "3", "x" * 300], 2, "…"),
    C("labels/long-text-label", lambda w: [CL, w.img["rgba"], *w.sdc("cat", "a very long label " * 30)], 0),
    C("labels/unicode-text-labels", lambda w: [CL, w.img["rgba"], *w.sdc("猫", "犬", "Ölfisch"), "--json"], 0),
    C("labels/braces-in-label", lambda w: [CL, w.img["rgba"], *w.sdc("a{}b", "c{0}d")], 0),
    C("labels/template-two-fields", lambda w: [CL, w.img["rgba"], *w.sdc(), "--template", "a {} {}"], 2, "{}"),
    C("labels/template-no-field", lambda w: [CL, w.img["rgba"], *w.sdc(), "--template", "a photo"], 2, "{}"),
    C("labels/template-numbered", lambda w: [CL, w.img["rgba"], *w.sdc(), "--template", "a {0}"], 2),
    C("labels/template-named", lambda w: [CL, w.img["rgba"], *w.sdc(), "--template", "a {name}"], 2),
    C("labels/template-stray-brace", lambda w: [CL, w.img["rgba"], *w.sdc(), "--template", "a { photo {}"], 2),
    C("labels/template-close-brace", lambda w: [CL, w.img["rgba"], *w.sdc(), "--template", "a } photo {}"], 2),
    C("labels/template-empty", lambda w: [CL, w.img["rgba"], *w.sdc(), "--template", ""], 2),
    C("labels/template-escaped", lambda w: [CL, w.img["rgba"], *w.sdc(), "--template", "{{x}} {}"], 0),
    C(
        "labels/file-latin1",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--labels-file", w.txt["labels_latin1.txt"]],
        2,
        "UTF-8",
    ),
    C(
        "labels/file-empty",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--labels-file", w.txt["labels_empty.txt"]],
        2,
    ),
    C(
        "labels/file-blank-line",
        lambda w: [
            CL,
            w.img["rgba"],
            *w.sdc()[:2],
            "--timesteps",
            "500",
            "--labels-file",
            w.txt["labels_blank_middle.txt"],
            "--json",
        ],
        0,
    ),
    C(
        "labels/file-bom-crlf",
        lambda w: [
            CL,
            w.img["rgba"],
            *w.sdc()[:2],
            "--timesteps",
            "500",
            "--labels-file",
            w.txt["labels_bom_crlf.txt"],
            "--json",
        ],
        0,
    ),
    C(
        "labels/file-duplicates",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--labels-file", w.txt["labels_dup.txt"]],
        2,
    ),
    C(
        "labels/file-binary",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--labels-file", w.txt["labels_binary.txt"]],
        2,
    ),
    C("labels/file-directory", lambda w: [CL, w.img["rgba"], "--model", w.sd, "--labels-file", w.root], 2),
    C("labels/file-missing", lambda w: [CL, w.img["rgba"], "--model", w.sd, "--labels-file", w.root / "nope.txt"], 2),
    C(
        "labels/prompts-no-header",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--prompts-file", w.txt["prompts_nohead.csv"]],
        2,
    ),
    C(
        "labels/prompts-short-row",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--prompts-file", w.txt["prompts_short.csv"]],
        2,
        "line 3",
    ),
    C(
        "labels/prompts-bad-classidx",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--prompts-file", w.txt["prompts_badidx.csv"]],
        2,
    ),
    C(
        "labels/prompts-latin1",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--prompts-file", w.txt["prompts_latin1.csv"]],
        2,
        "UTF-8",
    ),
    C(
        "labels/prompts-header-only",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--prompts-file", w.txt["prompts_headonly.csv"]],
        2,
    ),
    C(
        "labels/prompts-empty-name",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--prompts-file", w.txt["prompts_emptyname.csv"]],
        2,
    ),
    C(
        "labels/prompts-binary",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--prompts-file", w.txt["prompts_binary.csv"]],
        2,
    ),
    C(
        "labels/prompts-bom-crlf",
        lambda w: [CL, w.img["rgba"], "--model", w.sd, "--timesteps", "500", "--prompts-file", w.txt["prompts_ok.csv"]],
        0,
    ),
    C("labels/text-model-no-labels", lambda w: [CL, w.img["rgba"], "--model", w.sd, "--timesteps", "500"], 2),
    C("labels/class-model-own-labels", lambda w: [CL, w.img["digit0"], *w.mnist], 0),
    C(
        "labels/eval-labels-not-classes",
        lambda w: ["eval", "--dataset", f"folder:{w.fold}", "--out", "r", *w.mnist, "--labels", "1", "2"],
        2,
    ),
    C(
        "labels/eval-folder-not-model-classes",
        lambda w: ["eval", "--dataset", f"folder:{w.fold_catdog}", "--out", "r", *w.mnist],
        2,
    ),
    C(
        "labels/eval-text-model-folder",
        lambda w: ["eval", "--dataset", f"folder:{w.fold_catdog}", "--out", "r", "--model", w.sd, "--timesteps", "500"],
        0,
    ),
    # 3. numbers and devices
    C("numbers/seed-negative", lambda w: [CL, w.img["digit0"], *w.mnist, "--seed=-1"], 2),
    C("numbers/seed-2**63", lambda w: [CL, w.img["digit0"], *w.mnist, "--seed", str(2**63)], 2),
    C("numbers/seed-max", lambda w: [CL, w.img["digit0"], *w.mnist, "--seed", str(2**63 - 1)], 0),
    C("numbers/seed-word", lambda w: [CL, w.img["digit0"], *w.mnist, "--seed", "abc"], 2),
    C("numbers/seed-float", lambda w: [CL, w.img["digit0"], *w.mnist, "--seed", "1.5"], 2),
    C("numbers/batch-0", lambda w: [CL, w.img["digit0"], *w.mnist, "--batch-size", "0"], 2),
    C("numbers/batch-negative", lambda w: [CL, w.img["digit0"], *w.mnist, "--batch-size=-3"], 2),
    C("numbers/batch-word", lambda w: [CL, w.img["digit0"], *w.mnist, "--batch-size", "many"], 2),
    C("numbers/batch-auto", lambda w: [CL, w.img["digit0"], *w.mnist, "--batch-size", "auto"], 0),
    C("numbers/batch-1", lambda w: [CL, w.img["digit0"], *w.mnist, "--batch-size", "1"], 0),
    C("numbers/batch-huge", lambda w: [CL, w.img["digit0"], *w.mnist, "--batch-size", str(10**12)], 0),
    C(
        "numbers/device-cuda",
        lambda w: [CL, w.img["digit0"], *w.mnist, "--device", "cuda"],
        2,
        skip=CUDA and "has CUDA",
    ),
    C("numbers/device-mps", lambda w: [CL, w.img["digit0"], *w.mnist, "--device", "mps"], 2, skip=MPS and "has MPS"),
    C("numbers/device-cuda-99", lambda w: [CL, w.img["digit0"], *w.mnist, "--device", "cuda:99"], 2),
    C("numbers/device-tpu", lambda w: [CL, w.img["digit0"], *w.mnist, "--device", "tpu"], 2),
    C("numbers/device-empty", lambda w: [CL, w.img["digit0"], *w.mnist, "--device", ""], 2),
    C("numbers/timesteps-empty", lambda w: [CL, w.img["digit0"], *w.mnist, "--timesteps", ""], 2),
    C("numbers/timesteps-word", lambda w: [CL, w.img["digit0"], *w.mnist, "--timesteps", "all"], 2),
    C("numbers/timesteps-1000", lambda w: [CL, w.img["digit0"], *w.mnist, "--timesteps", "1000"], 2),
    C("numbers/timesteps-negative", lambda w: [CL, w.img["digit0"], *w.mnist, "--timesteps=-5"], 2),
    C("numbers/timesteps-step-0", lambda w: [CL, w.img["digit0"], *w.mnist, "--timesteps", "0:1000:0"], 2),
    C("numbers/timesteps-empty-range", lambda w: [CL, w.img["digit0"], *w.mnist, "--timesteps", "5:5:1"], 2),
    C("numbers/timesteps-float", lambda w: [CL, w.img["digit0"], *w.mnist, "--timesteps", "1.5"], 2),
    C("numbers/to-keep-alone", lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--to-keep", "5", "1"], 2),
    C(
        "numbers/stages-mismatch",
        lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--to-keep", "3", "--n-samples", "10", "20"],
        2,
    ),
    C(
        "numbers/to-keep-0",
        lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--to-keep", "0", "--n-samples", "5"],
        2,
    ),
    C(
        "numbers/n-samples-0",
        lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--to-keep", "1", "--n-samples", "0"],
        2,
    ),
    C(
        "numbers/n-samples-over-T",
        lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--to-keep", "1", "--n-samples", "5000"],
        2,
    ),
    C(
        "numbers/to-keep-increasing",
        lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--to-keep", "1", "2", "--n-samples", "2", "4"],
        2,
    ),
    C(
        "numbers/schedule-typo",
        lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--schedule", "cifar"],
        2,
        "cifar10",
    ),
    C("numbers/loss-typo", lambda w: [CL, w.img["digit0"], *w.mnist, "--loss", "l3"], 2),
    C("numbers/alpha-0", lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--alpha", "0"], 2),
    C("numbers/alpha-1.5", lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--alpha", "1.5"], 2),
    C("numbers/alpha-nan", lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--alpha", "nan"], 2),
    C("numbers/max-trials-0", lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--max-trials", "0"], 2),
    C("numbers/temperature-0", lambda w: [CL, w.img["digit0"], *w.mnist, "--temperature", "0"], 2),
    C("numbers/temperature-nan", lambda w: [CL, w.img["digit0"], *w.mnist, "--temperature", "nan"], 2),
    C("numbers/temperature-negative", lambda w: [CL, w.img["digit0"], *w.mnist, "--temperature=-1"], 2),
    C("numbers/top-0", lambda w: [CL, w.img["digit0"], *w.mnist, "--top", "0"], 2),
    C("numbers/image-size-0", lambda w: [CL, w.img["digit0"], *w.mnist, "--image-size", "0"], 2),
    C(
        "numbers/shortlist-k-0",
        lambda w: [CL, w.img["digit0"], *w.mnist, "--shortlist", "clip:x", "--shortlist-k", "0"],
        2,
    ),
    C("numbers/lora-scale-nan", lambda w: [CL, w.img["rgba"], *w.sdc(), "--lora-scale", "nan"], 2),
    C("numbers/eval-limit-negative", lambda w: [*w.ev(), "--limit=-1"], 2),
    C("numbers/eval-limit-word", lambda w: [*w.ev(), "--limit", "ten"], 2),
    C("numbers/eval-per-class-0", lambda w: [*w.ev(), "--per-class", "0"], 2),
    C("numbers/eval-limit-huge", lambda w: [*w.ev(), "--limit", str(10**9)], 0),
    C("numbers/eval-limit-and-subset", lambda w: [*w.ev(), "--limit", "2", "--subset", w.subset["ok.txt"]], 2),
    C("numbers/wino-t-interval-0", lambda w: [*w.wino_argv(), "--t-interval", "0"], 2),
    C("numbers/match-t-interval-negative", lambda w: [*w.match_argv(), "--t-interval=-10"], 2),
    C("numbers/wino-limit-negative", lambda w: [*w.wino_argv(), "--limit=-2"], 2),
    C("numbers/calibrate-per-class-0", lambda w: [*w.calib(), "--per-class", "0"], 2),
    C("numbers/calibrate-trials-0", lambda w: [*w.calib(), "--trials", "0"], 2),
    C("numbers/calibrate-seed-big", lambda w: [*w.calib(), "--seed", str(2**64)], 2),
    C("numbers/calibrate-batch-auto", lambda w: [*w.calib(), "--batch-size", "auto"], 0),
    C("numbers/train-steps-0", lambda w: ["train", "--out", "m", "--steps", "0"], 2),
    C("numbers/train-steps-negative", lambda w: ["train", "--out", "m", "--steps=-1"], 2),
    C("numbers/train-lr-nan", lambda w: ["train", "--out", "m", "--steps", "1", "--lr", "nan"], 2),
    C("numbers/train-lr-negative", lambda w: ["train", "--out", "m", "--steps", "1", "--lr=-0.1"], 2),
    C("numbers/train-batch-0", lambda w: ["train", "--out", "m", "--steps", "1", "--batch-size", "0"], 2),
    C("numbers/train-shift-negative", lambda w: ["train", "--out", "m", "--steps", "1", "--max-shift=-1"], 2),
    C("numbers/train-warmup-negative", lambda w: ["train", "--out", "m", "--steps", "1", "--warmup=-1"], 2),
    C("numbers/train-save-every-negative", lambda w: ["train", "--out", "m", "--steps", "1", "--save-every=-1"], 2),
    C(
        "numbers/train-device-cuda",
        lambda w: ["train", "--out", "m", "--steps", "1", "--device", "cuda"],
        2,
        skip=CUDA and "has CUDA",
    ),
    C("numbers/bench-iters-0", lambda w: ["bench", "--random-weights", "tiny", "--iters", "0"], 2),
    C("numbers/bench-repeats-0", lambda w: ["bench", "--random-weights", "tiny", "--repeats", "0"], 2),
    C("numbers/bench-warmup-negative", lambda w: ["bench", "--random-weights", "tiny", "--warmup=-1"], 2),
    C("numbers/bench-calls-0", lambda w: ["bench", "--random-weights", "tiny", "--calls-per-image", "0"], 2),
    C("numbers/bench-labels-0", lambda w: ["bench", "--random-weights", "tiny", "--labels", "0"], 2),
    C("numbers/bench-model-and-random", lambda w: ["bench", "--random-weights", "tiny", "--model", "builtin:mnist"], 2),
    C("numbers/demo-limit-negative", lambda w: ["demo", "--limit=-1", "--out", "d"], 2),
    C("numbers/demo-batch-0", lambda w: ["demo", "--batch-size", "0", "--out", "d", "--limit", "1"], 2),
    C("numbers/demo-seed-negative", lambda w: ["demo", "--seed=-1", "--out", "d", "--limit", "1"], 2),
    C("numbers/demo-device-tpu", lambda w: ["demo", "--device", "tpu", "--out", "d", "--limit", "1"], 2),
    C("numbers/eval-limit-0", lambda w: [*w.ev(), "--limit", "0"], 2),
    C("numbers/wino-limit-0", lambda w: [*w.wino_argv(), "--limit", "0"], 2),
    C("numbers/temperature-tiny", lambda w: [CL, w.img["digit0"], *w.mnist, "--temperature", "1e-300", "--json"], 0),
    C(
        "numbers/max-trials-huge",
        lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--max-trials", str(10**9)],
        2,
    ),
    # 4. noise files (builtin:mnist: [N, 1, 28, 28], three trials)
    C(
        "noise/nan",
        lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["nan_pt"], "--json"],
        2,
        "finite",
    ),
    C(
        "noise/inf",
        lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["inf_npy"], "--json"],
        2,
        "finite",
    ),
    C("noise/integers", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["int_pt"]], 2),
    C("noise/flat", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["flat_pt"]], 2),
    C("noise/too-few-rows", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["few_pt"]], 2),
    C("noise/wrong-size", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["small_pt"]], 2),
    C("noise/empty-file", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["empty_pt"]], 2),
    C("noise/text-file", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["text_pt"]], 2),
    C("noise/directory", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["dir_pt"]], 2),
    C("noise/missing", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.root / "nope.pt"], 2),
    C("noise/dict", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["dict_pt"]], 2),
    C("noise/txt-extension", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["txt"]], 2),
    C("noise/ok-pt", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["ok_pt"], "--json"], 0),
    C(
        "noise/ok-npy-float64",
        lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["ok_npy"], "--json"],
        0,
    ),
    C(
        "noise/ok-npy-float16",
        lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["ok_f16"], "--json"],
        0,
    ),
    C(
        "noise/with-seed",
        lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["ok_pt"], "--seed", "3"],
        2,
    ),
    C("noise/sd-nan", lambda w: [CL, w.img["rgba"], *w.sdc(), "--noise-file", w.noise["sd_nan"]], 2, "finite"),
    C("noise/sd-channels", lambda w: [CL, w.img["rgba"], *w.sdc(), "--noise-file", w.noise["sd_3ch"]], 2),
    C("noise/eval-nan", lambda w: [*w.ev(), "--noise-file", w.noise["nan_pt"]], 2, "finite"),
    C("noise/wino-nan", lambda w: [*w.wino_argv(), "--noise-file", w.noise["sd_nan"], "--json"], 2, "finite"),
    C("noise/wino-too-few", lambda w: [*w.wino_argv(), "--t-interval", "100", "--noise-file", w.noise["sd_ok"]], 2),
    C("noise/match-nan", lambda w: [*w.match_argv(), "--noise-file", w.noise["sd_nan"], "--json"], 2, "finite"),
    C(
        "noise/racing-too-short",
        lambda w: [CL, w.img["digit0"], "--model", "builtin:mnist", "--noise-file", w.noise["ok_pt"]],
        2,
    ),
    # 5. configs and folders
    C("configs/model-missing", lambda w: [CL, w.img["digit0"], "--model", w.root / "no-model"], 2),
    C("configs/model-is-file", lambda w: [CL, w.img["digit0"], "--model", w.models["file"]], 2),
    C("configs/model-empty-dir", lambda w: [CL, w.img["digit0"], "--model", w.models["empty"]], 2),
    C(
        "configs/model-index-list",
        lambda w: [CL, w.img["rgba"], *w.sdc()[2:], "--model", w.models["index_list"], "--labels", "a"],
        2,
    ),
    C(
        "configs/model-index-bad",
        lambda w: [CL, w.img["rgba"], "--model", w.models["index_bad"], "--labels", "a", "b"],
        2,
    ),
    C(
        "configs/unet-config-list",
        lambda w: [CL, w.img["rgba"], "--model", w.models["unet_list"], "--labels", "a", "b"],
        2,
    ),
    C(
        "configs/scheduler-config-bad",
        lambda w: [CL, w.img["rgba"], "--model", w.models["sched_bad"], "--labels", "a", "b"],
        2,
    ),
    C(
        "configs/classifier-config-list",
        lambda w: [CL, w.img["digit0"], "--model", w.models["cu_list"], "--timesteps", "500"],
        2,
    ),
    C(
        "configs/class-names-string",
        lambda w: [CL, w.img["digit0"], "--model", w.models["cu_str"], "--timesteps", "500"],
        2,
    ),
    C(
        "configs/class-names-empty",
        lambda w: [CL, w.img["digit0"], "--model", w.models["cu_none"], "--timesteps", "500"],
        2,
    ),
    C(
        "configs/image-size-string",
        lambda w: [CL, w.img["digit0"], "--model", w.models["cu_size"], "--timesteps", "500"],
        2,
    ),
    C("configs/builtin-unknown", lambda w: [CL, w.img["digit0"], "--model", "builtin:cifar"], 2, "mnist"),
    C("configs/model-empty-name", lambda w: [CL, w.img["digit0"], "--model", ""], 2),
    C("configs/hub-not-cached", lambda w: [CL, w.img["digit0"], "--model", "nobody/no-such-model-xyz"], 2),
    C("configs/weights-missing", lambda w: [CL, w.img["digit0"], *w.mnist, "--weights", w.root / "w.json"], 2),
    C(
        "configs/weights-malformed",
        lambda w: [CL, w.img["digit0"], *w.mnist, "--weights", w.txt["weights_bad.json"]],
        2,
    ),
    C("configs/weights-list", lambda w: [CL, w.img["digit0"], *w.mnist, "--weights", w.txt["weights_list.json"]], 2),
    C("configs/weights-directory", lambda w: [CL, w.img["digit0"], *w.mnist, "--weights", w.root], 2),
    C("configs/eval-out-file", lambda w: w.ev(w.a_file), 2),
    C("configs/eval-out-empty", lambda w: w.ev(""), 2),
    C("configs/report-out-empty", lambda w: ["report", w.root, "--out", ""], 2),
    C("configs/calibrate-out-empty", lambda w: w.calib(""), 2),
    C("configs/weights-nan", lambda w: [CL, w.img["digit0"], *w.mnist, "--weights", w.txt["weights_nan.json"]], 2),
    C("configs/eval-out-under-file", lambda w: w.ev(w.a_file / "run"), 2),
    C("configs/calibrate-out-dir", lambda w: w.calib(w.root), 2),
    C("configs/calibrate-out-under-file", lambda w: w.calib(w.a_file / "w.json"), 2),
    C("configs/train-out-file", lambda w: ["train", "--out", w.a_file, "--steps", "1"], 2),
    C(
        "configs/train-init-missing",
        lambda w: ["train", "--out", "m", "--steps", "1", "--init-from", w.root / "nope"],
        2,
    ),
    C("configs/demo-out-file", lambda w: ["demo", "--out", w.a_file, "--limit", "1"], 2),
    C("configs/wino-out-file", lambda w: [*w.wino_argv(), "--out", w.a_file], 2),
    C("configs/report-out-file", lambda w: ["report", w.root, "--out", w.a_file], 2),
    C("configs/report-missing", lambda w: ["report", w.root / "no-run"], 2),
    C("configs/report-file", lambda w: ["report", w.a_file], 2),
    C("configs/report-not-a-run", lambda w: ["report", w.fold], 2),
    C("configs/report-nothing", lambda w: ["report"], 2),
    C("configs/wino-dir-missing", lambda w: [*w.wino_argv(w.root / "nowino")], 2),
    C("configs/wino-dir-empty", lambda w: [*w.wino_argv(w.models["empty"])], 2),
    C(
        "configs/wino-jsonl-garbage",
        lambda w: [*w.wino_argv(wino_folder(w.root / "wino_garbage", lines=["{", "x"]))],
        2,
    ),
    C("configs/wino-jsonl-list", lambda w: [*w.wino_argv(wino_folder(w.root / "wino_list", lines=["[1, 2]"]))], 2),
    C("configs/subset-missing", lambda w: [*w.ev(), "--subset", w.root / "nope.txt"], 2),
    C("configs/subset-strings", lambda w: [*w.ev(), "--subset", w.subset["strings.json"]], 2),
    C("configs/subset-out-of-range", lambda w: [*w.ev(), "--subset", w.subset["range.json"]], 2),
    C("configs/subset-negative", lambda w: [*w.ev(), "--subset", w.subset["negative.txt"]], 2),
    C("configs/subset-empty", lambda w: [*w.ev(), "--subset", w.subset["empty.txt"]], 2),
    C("configs/subset-floats", lambda w: [*w.ev(), "--subset", w.subset["floats.txt"]], 2),
    C("configs/subset-float-npy", lambda w: [*w.ev(), "--subset", w.subset["float_npy"]], 2),
    C("configs/subset-json-object", lambda w: [*w.ev(), "--subset", w.subset["object.json"]], 2),
    C("configs/subset-ok", lambda w: [*w.ev(), "--subset", w.subset["ok.txt"]], 0),
    C("configs/dataset-unknown", lambda w: ["eval", "--dataset", "nobody/no-such-data", "--out", "r", *w.mnist], 2),
    C(
        "configs/dataset-builtin-typo",
        lambda w: ["eval", "--dataset", "builtin:mnits", "--out", "r", *w.mnist],
        2,
        "builtin:mnist",
    ),
    C("configs/dataset-cifar10-offline", lambda w: ["eval", "--dataset", "cifar10", "--out", "r", *w.mnist], 2),
    C("configs/dataset-folder-empty-path", lambda w: ["eval", "--dataset", "folder:", "--out", "r", *w.mnist], 2),
    C(
        "configs/dataset-folder-missing",
        lambda w: ["eval", "--dataset", f"folder:{w.root / 'nope'}", "--out", "r", *w.mnist],
        2,
    ),
    C(
        "configs/dataset-folder-is-file",
        lambda w: ["eval", "--dataset", f"folder:{w.a_file}", "--out", "r", *w.mnist],
        2,
    ),
    C(
        "configs/dataset-folder-no-classes",
        lambda w: ["eval", "--dataset", f"folder:{w.models['empty']}", "--out", "r", *w.mnist],
        2,
    ),
    C("configs/calibrate-one-class", lambda w: w.calib("w.json", class_folder(w.root / "one_class", ("3",))), 2),
    C(
        "configs/calibrate-offline-hub",
        lambda w: ["calibrate", "--model", "builtin:mnist", "--data", "cifar10", "--out", "w.json"],
        2,
    ),
    C("configs/calibrate-data-missing", lambda w: w.calib("w.json", w.root / "nope"), 2),
    C("configs/unet-missing", lambda w: [CL, w.img["rgba"], *w.sdc(), "--unet", w.root / "nope"], 2),
    C("configs/lora-missing", lambda w: [CL, w.img["rgba"], *w.sdc(), "--lora", w.root / "nope"], 2),
    C("configs/baseline-no-model", lambda w: [*w.match_argv(), "--baseline", "clip"], 2, "clip:MODEL"),
    C("configs/baseline-other-kind", lambda w: [*w.wino_argv(), "--baseline", "siglip:x"], 2, "clip:MODEL"),
    C("configs/baseline-missing-folder", lambda w: [*w.ev(), "--baseline", f"clip:{w.root / 'nope'}"], 2),
    C("configs/shortlist-missing-folder", lambda w: [CL, w.img["digit0"], *w.mnist, "--shortlist", "clip:/no/such"], 2),
    C("configs/option-for-other-family", lambda w: [CL, w.img["digit0"], *w.mnist, "--no-t5"], 2, "--no-t5"),
    C("configs/lora-scale-alone", lambda w: [CL, w.img["digit0"], *w.mnist, "--lora-scale", "2"], 2, "--lora"),
    C("configs/image-size-class-model", lambda w: [CL, w.img["digit0"], *w.mnist, "--image-size", "64"], 2),
    C("configs/bench-schedule-typo", lambda w: ["bench", "--model", "builtin:mnist", "--schedule", "cifar"], 2),
    C("configs/serve-port-word", lambda w: ["serve", "--port", "http"], 2),
    C("configs/models-extra-arg", lambda w: ["models", "sd"], 2),
    C("configs/no-command", lambda w: [], 2),
    C("configs/unknown-command", lambda w: ["clasify", w.img["digit0"]], 2),
    # 11. security: never unpickle (the marker would appear)
    C("security/noise-pt-pickle", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["evil_pt"]], 2),
    C(
        "security/noise-raw-pickle",
        lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["evil_raw_pt"]],
        2,
    ),
    C("security/noise-npy-pickle", lambda w: [CL, w.img["digit0"], *w.mnist3, "--noise-file", w.noise["evil_npy"]], 2),
    C("security/subset-npy-pickle", lambda w: [*w.ev(), "--subset", w.subset["evil_npy"]], 2),
    C("security/subset-pt-pickle", lambda w: [*w.ev(), "--subset", w.subset["evil_pt"]], 2),
    C("security/model-bin-only", lambda w: [CL, w.img["rgba"], "--model", w.models["sd_bin"], "--labels", "a", "b"], 2),
    C(
        "security/model-ckpt-only",
        lambda w: [CL, w.img["rgba"], "--model", w.models["sd_ckpt"], "--labels", "a", "b"],
        2,
    ),
    C("security/class-model-bin-only", lambda w: [CL, w.img["digit0"], "--model", w.models["cu_bin"]], 2),
    C("security/pickle-named-safetensors", lambda w: [CL, w.img["digit0"], "--model", w.models["fake_safetensors"]], 2),
    C("security/unet-bin-only", lambda w: [CL, w.img["rgba"], *w.sdc(), "--unet", w.models["unet_bin"]], 2),
    C("security/lora-bin-only", lambda w: [CL, w.img["rgba"], *w.sdc(), "--lora", w.models["lora_bin"]], 2),
    C(
        "security/train-init-bin-only",
        lambda w: ["train", "--out", "m", "--steps", "1", "--init-from", w.models["cu_bin"]],
        2,
    ),
    C("security/noise-pickle-eval", lambda w: [*w.ev(), "--noise-file", w.noise["evil_pt"]], 2),
    C("security/noise-pickle-wino", lambda w: [*w.wino_argv(), "--noise-file", w.noise["evil_npy"]], 2),
    C("security/noise-pickle-match", lambda w: [*w.match_argv(), "--noise-file", w.noise["evil_raw_pt"]], 2),
    C(
        "security/wino-dotdot",
        lambda w: [*w.wino_argv(wino_folder(w.root / "wino_up", "../../a_file")), "--json"],
        1,
        "images",
    ),
    C(
        "security/wino-absolute",
        lambda w: [*w.wino_argv(wino_folder(w.root / "wino_abs", str(w.img["rgba"]))), "--json"],
        1,
    ),
    C("security/wino-symlink-out", lambda w: [*w.wino_argv(escape_link(w)), "--json"], 1),
    C("security/wino-all-escape", lambda w: [*w.wino_argv(all_escape(w))], 2),
    # 7. output
    C("output/classify-json", lambda w: [CL, w.img["digit0"], w.img["digit1"], *w.mnist, "--json"], 0),
    C("output/quiet-before", lambda w: ["-q", CL, w.img["digit0"], *w.mnist], 0),
    C("output/quiet-after", lambda w: [CL, w.img["digit0"], *w.mnist, "-q"], 0),
    C("output/quiet-error-still-said", lambda w: ["-q", CL, w.img["missing"], *w.mnist], 2, "not found"),
    C("output/models-json", lambda w: ["models", "--json"], 0),
    C("output/models-quiet", lambda w: ["models", "-q"], 0),
    C("output/match-json", lambda w: [*w.match_argv(), "--json", "-q"], 0),
    C("output/match-csv-and-json", lambda w: [*w.match_argv(), "--json", "--csv"], 2),
    C("output/wino-json", lambda w: [*w.wino_argv(), "--json", "-q"], 0),
    C("output/version", lambda w: ["--version"], 0, skip=None),
    C("output/verbose-error", lambda w: ["-v", CL, w.img["missing"], *w.mnist], 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, world: World, tmp_path, monkeypatch, capfd):
    if case.skip:
        pytest.skip(case.skip)
    if case.id == "images/no-permission" and ROOT_USER:
        pytest.skip("root reads anything")
    monkeypatch.chdir(tmp_path)
    argv = case.argv(world)
    code, out, err = run(argv, capfd)
    check_rule(argv, code, out, err, case.code, case.say)
    if case.id.startswith("security/"):
        no_markers(world)
    if case.id == "images/bomb-among-good":
        assert [strict_loads(x)["image"] for x in out.splitlines()] == [str(world.img["digit0"])]
    if case.id == "images/unicode-name":
        assert strict_loads(out)["image"] == str(world.img["unicode"])
    if case.id == "labels/long-class-label":
        assert "x" * 100 not in err  # the label is shortened in the message
    if case.id in ("labels/file-bom-crlf", "labels/file-blank-line"):  # blank lines are skipped (README)
        assert {s["label"] for s in strict_loads(out)["scores"]} == {"cat", "dog"}
    if case.id == "images/eval-folder-with-junk":
        check_integrity(tmp_path / "run", expected=4)
    if case.id in ("images/eval-one-bad", "images/eval-all-bad"):
        check_integrity(tmp_path / "run", expected=4, failed=1 if case.code == 1 else 4)
    if case.id == "images/calibrate-one-bad":
        assert strict_loads((tmp_path / "w.json").read_text())
    if case.id.startswith("configs/") and case.code == 2:  # checked before work: nothing half-written
        assert not (tmp_path / "r" / "records-rank00000.jsonl").exists()
    if case.id == "output/version":
        assert re.fullmatch(r"diffusion-classifier \d+\.\d+\S*\n", out), out


# --- start-up: help, version and argument errors load no heavy library ------------------------------------

HEAVY = ("torch", "diffusers", "transformers", "datasets", "gradio", "matplotlib")
STARTUP = [
    ["--version"],
    ["--help"],
    *[[c, "--help"] for c in ("classify", "demo", "eval", "report", "calibrate", "winoground", "match")],
    *[[c, "--help"] for c in ("bench", "train", "models", "serve")],
    ["classify", "x.png", "--model", "m", "--seed=-1"],
    ["classify", "x.png", "--model", "m", "--batch-size", "0"],
    ["classify", "x.png", "--model", "m", "--device", "tpu"],
    ["classify", "missing.png", "--model", "builtin:mnist"],
    ["demo", "--limit", "many"],
    ["eval", "--dataset", "d"],
    ["report"],
    ["calibrate", "--model", "m", "--data", "d", "--out", "o", "--per-class", "x"],
    ["winoground", "--t-interval", "zero"],
    ["match", "--images", "x.png"],
    ["bench", "--random-weights", "nope"],
    ["train", "--out", "o", "--steps", "x"],
    ["models", "--bogus"],
    ["serve", "--port", "http"],
    ["nonsense"],
]
PROBE_STARTUP = """
import json, sys, time
t = time.perf_counter()
from diffusion_classifier.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
heavy = [m for m in %r if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy, "seconds": time.perf_counter() - t}), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", STARTUP, ids=[" ".join(a) for a in STARTUP])
def test_startup_loads_no_heavy_library(argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_STARTUP % (HEAVY,), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    *err, last = proc.stderr.strip().splitlines()
    result = json.loads(last)
    print(f"{' '.join(argv)}: {result['seconds']:.2f} s")  # measured, not asserted: machines differ
    assert result["heavy"] == [], result
    expected = 0 if "--help" in argv or "--version" in argv else 2
    check_rule(argv, result["code"], proc.stdout, "\n".join(err), expected)
    if "--help" in argv:
        assert "%%" not in proc.stdout and "usage:" in proc.stdout
        before_options = proc.stdout.split("options:")[0]
        assert len(before_options.split("\n\n")) >= 2 or argv == ["--help"], f"no description:\n{proc.stdout}"


# --- stdout closed early, interrupted and killed runs (subprocesses) --------------------------------------


def cli(*argv) -> list[str]:
    return [sys.executable, "-m", "diffusion_classifier", *[str(a) for a in argv]]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("what", ["classify", "models", "report"])
def test_output_piped_into_head_ends_quietly(what, world, tmp_path, capfd):
    if what == "report":
        runs = []
        for i in range(3):
            runs.append(tmp_path / f"r{i}")
            run(["eval", "--dataset", f"folder:{world.fold}", "--out", runs[-1], *world.mnist, "-q"], capfd)
        argv = cli("report", *runs, "--json", "--no-figures")
    elif what == "classify":
        argv = cli("classify", *[world.img["digit0"]] * 6, *world.mnist, "--json")
    else:
        argv = cli("models")
    cmd = " ".join(f"'{a}'" for a in argv) + f" 2>'{tmp_path / 'err.txt'}' | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env(), timeout=300)
    err = (tmp_path / "err.txt").read_text()
    assert proc.stdout.count("\n") == 1 and err == "", err


def wait_for_record(run_dir: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    start = time.time()
    while not any(p.read_text().count("\n") for p in run_dir.glob("records-rank*.jsonl")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, "no record written"
        time.sleep(0.2)


LONG = ["--dataset", "builtin:mnist", "--model", "builtin:mnist", "--timesteps", "0:1000:4", "--device", "cpu"]


@pytest.mark.slow
def test_ctrl_c_exits_130_keeps_records_and_a_second_process_is_refused(tmp_path, capfd):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        cli("eval", *LONG, "--limit", "20", "--out", out), stderr=subprocess.PIPE, text=True, env=env()
    )
    try:
        wait_for_record(out, proc)
        code, _, err = run(["eval", *LONG, "--limit", "20", "--out", out], capfd)  # the same --out, meanwhile
        check_rule([], code, "", err, 2, str(proc.pid))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    check_rule([], proc.returncode, "", err, 130)
    assert len([x for x in err.splitlines() if x.strip()]) == 1, err
    done = check_integrity(out)
    assert done, "the finished records were lost"
    code, _, err = run(["eval", *LONG, "--limit", str(len(done) + 1), "--out", out, "-q"], capfd)
    check_rule(["-q"], code, "", err, 0)
    check_integrity(out, expected=len(done) + 1)


@pytest.mark.slow
def test_kill_9_then_resume_takes_the_stale_lock_over(tmp_path, capfd):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli("eval", *LONG, "--limit", "20", "--out", out), stderr=subprocess.PIPE, env=env())
    try:
        wait_for_record(out, proc)
    finally:
        proc.kill()
        proc.communicate()
    done = check_integrity(out)
    code, _, err = run(["eval", *LONG, "--limit", str(len(done) + 1), "--out", out], capfd)
    check_rule([], code, "", err, 0)
    check_integrity(out, expected=len(done) + 1)


# --- run directories: resume, identity, retry, configs, report --out --------------------------------------


def ev(world: World, out: Path, *extra, dataset: str | None = None) -> list:
    return ["eval", "--dataset", dataset or f"folder:{world.fold}", "--out", out, *world.mnist, *extra]


def test_rerun_resumes_without_duplicates_and_a_new_limit_reuses_records(world, tmp_path, capfd):
    out = tmp_path / "run"
    mnist = ["--dataset", "builtin:mnist", "--model", "builtin:mnist", "--timesteps", "500", "--out", out]
    for limit, expected in [(2, 2), (2, 2), (4, 4), (3, 4)]:
        code, _, err = run(["eval", *mnist, "--limit", limit], capfd)
        check_rule([], code, "", err, 0)
        check_integrity(out, expected=expected)
    code, out_text, err = run(["report", out, "--json", "--no-figures"], capfd)
    check_rule(["--json"], code, out_text, err, 0)
    assert strict_loads(out_text)["n"] == 3  # the current selection


@pytest.mark.parametrize(
    "change",
    [["--seed", "1"], ["--loss", "l1"], ["--exif-orientation"], ["--timesteps", "400"], ["--model", "MODEL"]],
    ids=["seed", "loss", "exif", "timesteps", "model"],
)
def test_another_configuration_is_refused_and_records_untouched(change, world, tmp_path, capfd):
    out = tmp_path / "run"
    run(ev(world, out, "-q"), capfd)
    before = records(out)
    change = [str(world.models["cu_size"].parent.parent / "class-unet") if a == "MODEL" else a for a in change]
    code, _, err = run([*ev(world, out), *change], capfd)
    check_rule([], code, "", err, 2)
    assert records(out) == before


def test_same_name_other_folder_is_refused_same_folder_other_path_resumes(world, tmp_path, monkeypatch, capfd):
    a, b = tmp_path / "a", tmp_path / "b"
    class_folder(a / "digits")
    class_folder(b / "digits", seed=50)  # the same names and sizes, other digits
    out = tmp_path / "run"
    monkeypatch.chdir(a)
    code, _, err = run(["eval", "--dataset", "folder:digits", "--out", out, *world.mnist], capfd)
    check_rule([], code, "", err, 0)
    before = records(out)
    monkeypatch.chdir(b)
    code, _, err = run(["eval", "--dataset", "folder:digits", "--out", out, *world.mnist], capfd)
    check_rule([], code, "", err, 2, "dataset")
    assert records(out) == before
    code, _, err = run(["eval", "--dataset", "folder:../a/digits", "--out", out, *world.mnist], capfd)
    check_rule([], code, "", err, 0)
    assert records(out) == before  # nothing new to do


@pytest.mark.parametrize("edit", ["add", "remove", "rename"])
def test_a_changed_folder_is_refused(edit, world, tmp_path, capfd):
    data = class_folder(tmp_path / "digits")
    out = tmp_path / "run"
    run(ev(world, out, dataset=f"folder:{data}"), capfd)
    before = records(out)
    if edit == "add":
        grey(data / "3" / "9.png", 99)
    elif edit == "remove":
        (data / "8" / "1.png").unlink()
    else:
        (data / "8" / "1.png").rename(data / "8" / "7.png")
    code, _, err = run(ev(world, out, dataset=f"folder:{data}"), capfd)
    check_rule([], code, "", err, 2)
    assert records(out) == before


def test_failed_images_are_retried_after_the_fix(world, tmp_path, capfd):
    data = class_folder(tmp_path / "digits", bad=1)
    out = tmp_path / "run"
    code, _, err = run(ev(world, out, dataset=f"folder:{data}"), capfd)
    check_rule([], code, "", err, 1)
    grey(data / "3" / "0.png", 7)  # the user fixes the file
    code, _, err = run(ev(world, out, dataset=f"folder:{data}"), capfd)
    check_rule([], code, "", err, 0)
    check_integrity(out, expected=4)
    code, text, err = run(["report", out, "--json", "--no-figures"], capfd)
    check_rule(["--json"], code, text, err, 0)
    assert strict_loads(text)["failed"] == 0 and strict_loads(text)["n"] == 4


def test_a_torn_last_line_is_ignored_and_cut(world, tmp_path, capfd):
    out = tmp_path / "run"
    run(ev(world, out, "--limit", "2"), capfd)
    with open(out / "records-rank00000.jsonl", "a") as f:
        f.write('{"index": 3, "label": "8", "sta')
    code, text, err = run(["report", out, "--json", "--no-figures"], capfd)
    check_rule(["--json"], code, text, err, 0)
    code, _, err = run(ev(world, out), capfd)
    check_rule([], code, "", err, 0)
    check_integrity(out, expected=4)


@pytest.mark.parametrize(
    "config",
    ['{"model": ', "[1, 2, 3]", "null", "SEED", ""],
    ids=["malformed", "list", "null", "seed-a-string", "empty"],
)
def test_a_bad_config_json_is_one_line_before_work(config, world, tmp_path, capfd):
    out = tmp_path / "run"
    run(ev(world, out, "--limit", "1"), capfd)
    if config == "SEED":
        config = json.dumps({**json.loads((out / "config.json").read_text()), "seed": "zero"})
    (out / "config.json").write_text(config)
    before = records(out)
    for argv in (ev(world, out), ["report", out, "--no-figures"]):
        code, _, err = run(argv, capfd)
        check_rule(argv, code, "", err, 2, "config.json")
    assert records(out) == before


def test_eval_and_winoground_never_share_a_run_directory(world, tmp_path, capfd):
    wino, evald = tmp_path / "wino", tmp_path / "eval"
    check_rule([], *run([*world.wino_argv(), "--out", wino, "-q"], capfd)[:1], "", "", 0)
    check_rule([], *run(ev(world, evald, "-q"), capfd)[:1], "", "", 0)
    code, _, err = run(ev(world, wino), capfd)
    check_rule([], code, "", err, 2)
    code, _, err = run([*world.wino_argv(), "--out", evald], capfd)
    check_rule([], code, "", err, 2)
    code, _, err = run([*world.wino_argv(), "--out", wino, "--t-interval", "250"], capfd)
    check_rule([], code, "", err, 2)
    before = records(wino)
    code, text, err = run([*world.wino_argv(), "--out", wino, "--json"], capfd)  # resumes: nothing new
    check_rule(["--json"], code, text, err, 0)
    assert records(wino) == before and len(before) == 2
    code, text, err = run(["report", wino, evald, "--no-figures"], capfd)
    check_rule([], code, text, err, 0)


def test_report_out_never_overwrites_another_runs_figures(world, tmp_path, capfd):
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    for r in runs:
        run(ev(world, r, "-q"), capfd)
    figures = tmp_path / "figures"
    code, _, err = run(["report", *runs, runs[0], "--out", figures], capfd)
    check_rule([], code, "", err, 0)
    folders = sorted(p for p in figures.iterdir() if p.is_dir())
    assert len(folders) == 3, folders
    assert all((f / "confusion.png").exists() for f in folders)


def test_report_with_a_missing_run_reports_the_others_and_exits_1(world, tmp_path, capfd):
    good = tmp_path / "good"
    run(ev(world, good, "-q"), capfd)
    code, text, err = run(["report", good, tmp_path / "gone", "--json", "--no-figures"], capfd)
    check_rule(["--json"], code, text, err, 1)
    assert [strict_loads(x)["n"] for x in text.splitlines()] == [4]


def test_report_of_a_run_with_no_classified_image_is_standard_json(world, tmp_path, capfd):
    out = tmp_path / "run"
    code, _, err = run(ev(world, out, dataset=f"folder:{world.fold_allbad}"), capfd)
    check_rule([], code, "", err, 2)
    code, text, err = run(["report", out, "--json"], capfd)
    check_rule(["--json"], code, text, err, 0)
    assert strict_loads(text)["accuracy"] is None


# --- defaults stay the model's --------------------------------------------------------------------------


def racing_config(world, tmp_path, capfd, *flags) -> dict:
    out = tmp_path / "_".join(flags).replace("-", "") or tmp_path / "plain"
    argv = ["eval", "--dataset", f"folder:{world.fold}", "--model", "builtin:mnist", "--out", out, "--limit", "1"]
    code, _, err = run([*argv, *flags], capfd)
    check_rule([], code, "", err, 0)
    return json.loads((out / "config.json").read_text())["schedule"]


def test_one_racing_flag_keeps_the_models_other_racing_defaults(world, tmp_path, capfd):
    plain = racing_config(world, tmp_path, capfd)
    assert plain["kind"] == "Racing" and plain["alpha"] == 0.01  # builtin:mnist's own (README)
    assert racing_config(world, tmp_path, capfd, "--max-trials", "40") == {**plain, "cap": 40}
    assert racing_config(world, tmp_path, capfd, "--alpha", "0.05") == {**plain, "alpha": 0.05}
    assert racing_config(world, tmp_path, capfd, "--schedule", "racing")["alpha"] == 0.002


# --- train, bench, serve --------------------------------------------------------------------------------


def test_train_a_step_and_continue_from_it(world, tmp_path, capfd):
    code, _, err = run(["train", "--out", tmp_path / "m", "--steps", "1", "--batch-size", "4", "-q"], capfd)
    check_rule(["-q"], code, "", err, 0)
    argv = ["train", "--out", tmp_path / "m2", "--steps", "1", "--batch-size", "4", "--init-from", tmp_path / "m"]
    code, _, err = run([*argv, "-q"], capfd)
    check_rule(["-q"], code, "", err, 0)
    code, text, err = run(
        ["classify", world.img["digit0"], "--model", tmp_path / "m2", "--timesteps", "500", "--json"], capfd
    )
    check_rule(["--json"], code, text, err, 0)


def test_bench_json_is_standard(tmp_path, capfd):
    argv = ["bench", "--random-weights", "tiny", "--device", "cpu", "--iters", "1", "--warmup", "0", "--repeats", "1"]
    code, text, err = run([*argv, "--json", "-q"], capfd)
    check_rule(["--json", "-q"], code, text, err, 0)


@pytest.mark.parametrize(
    "argv",
    [["--port", "70000"], ["--port=-1"], ["--model", "/no/such/model"], ["--device", "tpu"]],
    ids=["port-too-big", "port-negative", "model-missing", "device"],
)
def test_serve_refuses_bad_input_before_serving(argv, tmp_path):
    proc = subprocess.run(cli("serve", *argv), capture_output=True, text=True, env=env(), timeout=120, cwd=tmp_path)
    check_rule(argv, proc.returncode, proc.stdout, proc.stderr, 2)


# --- demo: resume, baseline on the same digits ----------------------------------------------------------


@pytest.mark.slow
def test_demo_resumes_refuses_other_settings_and_fresh_starts_over(tmp_path, capfd):
    out = tmp_path / "demo"
    code, text, err = run(["demo", "--out", out, "--limit", "1", "--json"], capfd)
    check_rule(["--json"], code, text, err, 0)
    code, text, err = run(["demo", "--out", out, "--limit", "2", "--json"], capfd)
    check_rule(["--json"], code, text, err, 0)
    result = strict_loads(text)
    assert result["n"] == 2 and 0 <= result["baseline_accuracy"] <= 1
    # the baseline is scored on the digits the diffusion classifier is reported on (its cached predictions)
    shown = json.loads((out / "results.json").read_text())["images"]
    predictions = json.loads((out / "baseline.json").read_text())["predictions"]
    hits = [predictions[r["index"]] == r["label_index"] for r in shown]
    assert len(shown) == 2 and result["baseline_accuracy"] == sum(hits) / len(hits)
    check_integrity(out, expected=2)
    code, _, err = run(["demo", "--out", out, "--limit", "2", "--seed", "1"], capfd)
    check_rule([], code, "", err, 2)
    code, text, err = run(["demo", "--out", out, "--limit", "1", "--fresh", "--json"], capfd)
    check_rule(["--json"], code, text, err, 0)
    check_integrity(out, expected=1)
    assert strict_loads(text)["n"] == 1


def test_resume_with_save_errors_added_keeps_one_record_per_image(world, tmp_path, capfd):
    out = tmp_path / "run"
    run(ev(world, out, "--limit", "2"), capfd)
    code, _, err = run(ev(world, out, "--save-errors"), capfd)
    check_rule([], code, "", err, 0)
    check_integrity(out, expected=4)


def test_calibrated_weights_classify_and_csv_parses(world, tmp_path, capfd):
    weights = tmp_path / "fit" / "w.json"
    code, _, err = run(world.calib(weights), capfd)
    check_rule([], code, "", err, 0)
    code, text, err = run([CL, world.img["digit0"], *world.mnist, "--weights", weights, "--json"], capfd)
    check_rule(["--json"], code, text, err, 0)
    code, text, err = run([*world.match_argv(), "--csv", "-q"], capfd)
    check_rule(["-q"], code, text, err, 0)
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 3 and {len(r) for r in rows} == {4}, rows  # header + 2 images; scorer, image, 2 captions


@pytest.mark.slow
def test_two_runs_started_together_on_one_out_never_both_work(tmp_path):
    out = tmp_path / "run"
    argv = cli("eval", *LONG[:-4], "--timesteps", "500", "--device", "cpu", "--limit", "30", "--out", out)
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env()) for _ in "ab"]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    for code, err in results:
        check_rule([], code, "", err, code)
    assert codes in ([0, 0], [0, 2]), results  # one refused while the other ran, or one after the other
    check_integrity(out, expected=30)


@pytest.mark.slow
def test_ctrl_c_during_classify_leaves_whole_json_lines(world):
    argv = cli(CL, *[world.img["digit0"]] * 40, "--model", "builtin:mnist", "--timesteps", "0:1000:10", "--json")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    first = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    check_rule(["--json"], proc.returncode, first + rest, err, 130)
    assert strict_loads(first)["image"] == str(world.img["digit0"])


@pytest.mark.slow
def test_quiet_on_a_terminal_writes_nothing_to_stderr(world, tmp_path):
    """Progress bars appear only on a terminal: there, -q must still silence them (and every note)."""
    import pty

    out = tmp_path / "run"
    for argv in (
        [CL, world.img["digit0"], "--model", "builtin:mnist", "-q"],
        ["eval", "--dataset", f"folder:{world.fold}", "--model", "builtin:mnist", "--out", out, "-q"],
    ):
        leader, follower = pty.openpty()
        proc = subprocess.run(cli(*argv), stdout=subprocess.PIPE, stderr=follower, env=env(), timeout=300)
        os.close(follower)
        err = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            err += chunk
        os.close(leader)
        assert proc.returncode == 0 and err == b"", err


def test_shards_by_hand_give_every_image_once(world, tmp_path, monkeypatch, capfd):
    """Two machines without a shared filesystem: RANK / WORLD_SIZE set by hand (docs/evaluation.md)."""
    out = tmp_path / "run"
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, _, err = run(ev(world, out), capfd)
        check_rule([], code, "", err, 0)
    check_integrity(out, expected=4)
    assert len(list(out.glob("records-rank*.jsonl"))) == 2
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, _, err = run(ev(world, out), capfd)  # one process now: nothing left to do
    check_rule([], code, "", err, 0)
    check_integrity(out, expected=4)


@pytest.mark.parametrize("rank,world_size", [("2", "2"), ("x", "2"), ("0", "zero"), ("-1", "2")])
def test_a_bad_rank_is_one_line(rank, world_size, world, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    code, _, err = run(ev(world, tmp_path / "run"), capfd)
    check_rule([], code, "", err, 2, "RANK" if rank != "0" else "WORLD_SIZE")

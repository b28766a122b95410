"""Images: the one loader of image files and dataset bytes, and the official preprocessing (no torchvision).

Every path that opens an image (classify, eval's datasets, Winoground, match, CLIP) calls load_image.
Its rules (docs/images.md):
- the image keeps its own mode (RGBA, LA, P, CMYK, L, ...): the official transforms resize and crop the
  raw image and convert it to RGB last, and for RGBA, LA and P images that order changes the pixels;
- the first frame of an animated image;
- 16-bit images are scaled from 0..65535 to 0..255, 32-bit ('I', 'F') from their own min..max: never
  clipped (PIL's convert clips, so a 16-bit grey PNG would turn black and white);
- images over ImageOptions.max_pixels (a decompression-bomb guard) are refused, per image;
- EXIF orientation is ignored unless asked for (the official code ignores it).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import UserInputError
from ..names import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:  # torch loads on first use: the CLI reads this module before it parses arguments
    import torch


@dataclass(frozen=True)
class ImageOptions:
    """How image files are opened (CLI: --max-image-pixels, --exif-orientation)."""

    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the decompression-bomb cap; None: no cap
    exif_orientation: bool = False  # rotate/flip by the EXIF Orientation tag (the official code does not)

    def __post_init__(self) -> None:
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or self.max_pixels < 1):
            raise UserInputError(f"--max-image-pixels must be a positive number of pixels, got {self.max_pixels}")


DEFAULT_OPTIONS = ImageOptions()

# PIL reads its bomb cap from a module global at open time; load_image swaps in its own per-call cap,
# so the global is cleared for the (header-only) open, under a lock.
_PIL_CAP_LOCK = threading.Lock()


def load_image(source: Any, options: ImageOptions = DEFAULT_OPTIONS, name: str | None = None) -> Image.Image:
    """A PIL image, in its own mode, from a file path, raw bytes, an HF image cell or a PIL image.

    Bad input (a missing file, a directory, an undecodable or oversized image) is a one-line UserInputError
    naming the image (`name`, else the path). A PIL image is taken as it is (its current frame).
    """
    if isinstance(source, Image.Image):
        return to_eight_bits(ImageOps.exif_transpose(source) if options.exif_orientation else source)
    name = name or source_name(source)
    fp = _open_target(source, name)
    try:
        with _open_uncapped(fp) as img:
            check_pixels(img.size, name, options.max_pixels)
            img.seek(0)  # an animated image: its first frame
            img.load()  # decode now, inside this try
            if options.exif_orientation:
                img = ImageOps.exif_transpose(img)
            return to_eight_bits(img.copy())  # a copy: independent of the file, which closes here
    except UserInputError:
        raise
    except Exception as exc:  # a broken file raises many types from PIL's decoders; each means "cannot read"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserInputError(f"cannot read image {name}: {reason}") from None


def source_name(source: Any) -> str:
    """How messages name an image source: its path, else 'image bytes'."""
    if isinstance(source, dict):  # a datasets.Image cell: {"bytes": ..., "path": ...}
        return str(source.get("path") or "image bytes")
    return str(source) if isinstance(source, (str, Path)) else "image bytes"


def _open_target(source: Any, name: str) -> Any:
    """What Image.open reads: a checked path or a bytes buffer."""
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    if isinstance(source, io.IOBase):
        return source
    if not isinstance(source, (str, Path)):
        raise UserInputError(f"expected an image file or a PIL image, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        raise UserInputError(f"{name} is a directory, not an image file; give image files")
    if path.exists() and not path.is_file():  # a device, a pipe, a socket: never an image (and may block)
        raise UserInputError(f"{name} is not a regular file; give image files")
    if not path.is_file():
        raise UserInputError(f"image not found: {name}")
    return path


def _open_uncapped(fp: Any) -> Image.Image:
    with _PIL_CAP_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def check_pixels(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    """Refuse an image over the pixel cap before it is decoded (a 48 KB PNG can decode to 400 MB)."""
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise UserInputError(too_many_pixels(name, size, max_pixels))


def too_many_pixels(name: str, size: tuple[int, int], max_pixels: int | None) -> str:
    n = size[0] * size[1]
    return (
        f"image {name} has {n:,} pixels ({size[0]}x{size[1]}), over the cap of {max_pixels:,} that guards against "
        f"decompression bombs; if you trust it, raise the cap: --max-image-pixels {n} "
        f"(Python: ImageOptions(max_pixels={n}))"
    )


def to_eight_bits(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale images as 8-bit 'L', scaled, never clipped; other modes unchanged.

    'I;16*': 0..65535 -> 0..255 (the format's range, so exposure is kept). 'I' and 'F' have no white
    level: their own min..max -> 0..255 (a constant image becomes 0); NaN counts as the minimum.
    """
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        arr = np.clip(np.nan_to_num(arr, nan=lo), lo, hi)
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    else:
        return img
    return Image.fromarray(np.rint(arr).astype(np.uint8), "L")


# --- the official preprocessing ------------------------------------------------------------------


def resize_short_side(img: Image.Image, size: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """torchvision Resize(size): the short side becomes size, the long side int(size * long / short).

    PIL resizes P and 1 images with NEAREST whatever is asked, and RGBA / LA with premultiplied alpha.
    """
    check_aspect(img.size, size)
    w, h = img.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img if new == (w, h) else img.resize(new, resample)


def check_aspect(image_size: tuple[int, int], size: int) -> None:
    """Refuse an image so elongated that scaling its short side to size would exceed the default pixel cap
    (a 1 x 1,000,000 strip would become 512 x 512,000,000 before the crop)."""
    short, long = sorted(image_size)
    if size * size * long / short > DEFAULT_MAX_PIXELS:
        raise UserInputError(
            f"image of {image_size[0]}x{image_size[1]} pixels is too elongated: scaling its short side to {size} "
            f"would make it {size} x {int(size * long / short):,}; crop it to a less extreme aspect ratio"
        )


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision CenterCrop(size): offsets round((w - size) / 2), round((h - size) / 2)."""
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """(C, H, W) float32 in [-1, 1]: ToTensor, then Normalize([0.5], [0.5]) as torchvision computes it."""
    import torch

    img = img.convert("RGB" if channels == 3 else "L")
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return (torch.from_numpy(np.ascontiguousarray(arr)) - 0.5) / 0.5


def reference_transform(img: Image.Image, size: int) -> torch.Tensor:
    """The published SD (and Winoground) preprocessing, in its order: Resize(size, bicubic), CenterCrop(size),
    RGB, ToTensor, Normalize (diffusion-classifier eval_prob_adaptive.get_transform)."""
    return to_tensor(center_crop(resize_short_side(img, size), size).convert("RGB"))

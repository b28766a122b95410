"""Image files and the reference preprocessing (torchvision Resize + CenterCrop semantics, without torchvision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserInputError


def load_image(path: str | Path) -> Image.Image:
    """An RGB PIL image from a file; a missing or unreadable file is a UserInputError."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserInputError(f"cannot read image {path}: {exc.__class__.__name__}") from None


def resize_short_side(img: Image.Image, size: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """torchvision Resize(size): the short side becomes size, the long side int(size * long / short)."""
    w, h = img.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img if new == (w, h) else img.resize(new, resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision CenterCrop(size): offsets round((w - size) / 2), round((h - size) / 2)."""
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """(C, H, W) float32 in [-1, 1] (ToTensor then Normalize([0.5], [0.5]))."""
    img = img.convert("RGB" if channels == 3 else "L")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr)) * 2.0 - 1.0


def reference_transform(img: Image.Image, size: int) -> torch.Tensor:
    """The published SD preprocessing: Resize(size, bicubic), CenterCrop(size), RGB, [-1, 1]."""
    return to_tensor(center_crop(resize_short_side(img.convert("RGB"), size), size))

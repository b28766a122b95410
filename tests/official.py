"""Independent re-implementations of the official code's preprocessing (diffusion-classifier e9f772d and the ADM crop
of eval_prob_dit.py), with torchvision's arithmetic written out: shared by tests/test_images.py and
tests/test_official_parity.py."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def official_sd_transform(img: Image.Image, size: int) -> torch.Tensor:
    """diffusion-classifier e9f772d get_transform: Compose(Resize(size, BICUBIC), CenterCrop(size),
    convert-to-RGB, ToTensor, Normalize([.5], [.5])), with torchvision's arithmetic written out."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision _compute_resized_output_size
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # CenterCrop
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    x = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()  # ToTensor
    x = x.to(torch.float32).div(255)
    return (x - torch.tensor([0.5]).view(-1, 1, 1)) / torch.tensor([0.5]).view(-1, 1, 1)  # Normalize


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's center crop, as copied into the official eval_prob_dit.py."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size])


def official_dit_transform(img: Image.Image, size: int) -> torch.Tensor:
    """torchvision ImageFolder's loader converts to RGB on open; then eval_prob_dit.get_transform:
    center_crop_arr, ToTensor, Normalize(mean=[.5] * 3, std=[.5] * 3)."""
    arr = np.array(center_crop_arr(img.convert("RGB"), size), np.uint8)
    x = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div(255)
    return (x - 0.5) / 0.5

"""Model families behind one interface, and the one factory that loads any of them by name or path."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserInputError
from ..files import read_json_object
from .base import DiffusionAdapter

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"


@dataclass(frozen=True)
class Family:
    """A model family: detect(folder) says whether a folder holds one; load builds its adapter.

    options: the keyword arguments of load beyond dtype and device (unet, lora, ...); any other given is an error.
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., DiffusionAdapter]
    options: frozenset[str] = frozenset({"image_size"})
    description: str = ""


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """cuda if available, else mps, else cpu, unless asked; a device this machine lacks is a UserInputError."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserInputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    check_device(dev, str(device))
    return dev


def check_device(dev: torch.device, name: str) -> None:
    """Refuse what torch would only fail on later (in the first model call, with a traceback)."""
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserInputError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise UserInputError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif dev.type == "mps":
        if not _mps_available():
            raise UserInputError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise UserInputError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """float32 unless asked; names as in --dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserInputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_alias(model: str) -> str:
    """The hub id of a short name (aliases.ALIASES), unless a local folder has that name; else model unchanged."""
    from .aliases import ALIASES

    alias = ALIASES.get(model)
    if alias is None or Path(model).exists():
        return model
    _import_families()
    if alias.family not in FAMILIES:
        raise UserInputError(
            f"{model} ({alias.hub_id}) is a {alias.family} model, which this version cannot load yet; "
            f"supported families: {', '.join(FAMILIES)} (see `diffusion-classifier models`)"
        )
    return alias.hub_id


def resolve_model_path(model: str) -> Path:
    """A local folder for a builtin name, an alias, a folder path, or a hub id (from the local cache when offline)."""
    model = resolve_alias(model)
    if model.startswith("builtin:"):
        name = model.split(":", 1)[1]
        path = BUILTIN_DIR / name
        if not path.is_dir():
            raise UserInputError(f"unknown builtin model {name!r}; available: {', '.join(builtin_names()) or 'none'}")
        return path
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserInputError(f"--model {model} is a file; give the model's folder")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise UserInputError(f"model folder not found: {model}")
    return _snapshot(model)


def _snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    try:
        return Path(
            snapshot_download(
                repo_id,
                # the pipeline's component folders only: no top-level single-file checkpoints, no fp16 duplicates
                allow_patterns=["*.json", "*.txt", "*/*.safetensors", "*.model", "tokenizer*", "*merges*", "*vocab*"],
                ignore_patterns=["*.fp16.*", "*non_ema*"],
                local_files_only=offline,
            )
        )
    except Exception as exc:  # the hub client raises many types; all mean "cannot get this model"
        why = "it is not in the local cache and HF_HUB_OFFLINE is set" if offline else exc.__class__.__name__
        raise UserInputError(f"cannot load model {repo_id!r}: {why}") from None


def load_adapter(
    model: str, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None, **kwargs
) -> DiffusionAdapter:
    """The adapter for a model name or path: the first registered family that recognises the folder."""
    _import_families()
    path = resolve_model_path(model)
    check_config_files(path)
    dev = resolve_device(device)
    given = {k: v for k, v in kwargs.items() if v is not None}
    for family in FAMILIES.values():
        if family.detect(path):
            unsupported = sorted(set(given) - family.options)
            if unsupported:
                raise unsupported_option(unsupported[0], family.name)
            log.info("loading %s as %s", path, family.name)
            return family.load(path, dtype=resolve_dtype(dtype, dev), device=dev, **given)
    raise UserInputError(
        f"{model}: no supported model found there (expected a diffusers pipeline folder with model_index.json, "
        f"or a class-conditional model folder); families: {', '.join(FAMILIES)}"
    )


def check_config_files(path: Path) -> None:
    """Every config JSON the families read must hold an object: one clear line, not a traceback in a loader."""
    names = ("model_index.json", "classifier_config.json", "*/config.json", "*/scheduler_config.json")
    for found in sorted({f for pattern in names for f in path.glob(pattern) if f.is_file()}):
        read_json_object(found, fix="the model folder is damaged: download or save it again")


def unsupported_option(option: str, family: str) -> UserInputError:
    """The error for a load option (unet, no_t5, ...) that the detected family does not take."""
    takers = [f.name for f in FAMILIES.values() if option in f.options]
    flag = "--" + option.replace("_", "-")
    return UserInputError(f"{flag} applies to {', '.join(takers)} models only, not {family} ones: leave it out")


def model_catalog() -> dict[str, list[dict]]:
    """Every registered family (name, description, load options) and every alias (hub id, family, supported)."""
    from .aliases import ALIASES

    _import_families()
    families = [{"name": f.name, "description": f.description, "options": sorted(f.options)} for f in FAMILIES.values()]
    aliases = [
        {"name": n, "hub_id": a.hub_id, "family": a.family, "note": a.note, "supported": a.family in FAMILIES}
        for n, a in ALIASES.items()
    ]
    return {"families": families, "aliases": aliases}


#: The family modules, in the order families are listed and tried (each registers its families on import);
#: messages that name families keep this order.
FAMILY_MODULES = ("class_conditional", "flux", "pixart", "sd3", "stable_diffusion", "sdxl")


def _import_families() -> None:
    """Import the family modules so they register themselves (kept lazy: diffusers is slow to import)."""
    for module in FAMILY_MODULES:
        importlib.import_module(f".{module}", __name__)

"""Diffusion Classifier: a pretrained conditional diffusion model as a zero-shot image classifier.

The public names load on first use (PEP 562), so `import diffusion_classifier` and the command line's
`--help` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import UserInputError as UserInputError  # light: re-exported as is

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ClassificationResult": "pipeline",
    "ClassifierConfig": "config",
    "DiffusionAdapter": "models.base",
    "DiffusionClassifier": "pipeline",
    "ErrorLedger": "estimator",
    "Full": "schedules",
    "NoiseBank": "noise",
    "PUBLISHED": "schedules",
    "Racing": "schedules",
    "Selection": "evaluation",
    "Staged": "schedules",
    "Trial": "estimator",
    "count_calls": "schedules",
    "evaluate": "evaluation",
    "get_schedule": "schedules",
    "per_sample_loss": "estimator",
    "q_sample": "estimator",
    "schedule_names": "schedules",
}

__all__ = sorted([*_EXPORTS, "UserInputError"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

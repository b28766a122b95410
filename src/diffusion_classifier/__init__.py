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
    "ErrorLedger": "core.estimator",
    "Full": "core.schedules",
    "NoiseBank": "core.noise",
    "PUBLISHED": "core.schedules",
    "Racing": "core.schedules",
    "Selection": "runs.evaluation",
    "Staged": "core.schedules",
    "Trial": "core.estimator",
    "count_calls": "core.schedules",
    "evaluate": "runs.evaluation",
    "get_schedule": "core.schedules",
    "per_sample_loss": "core.estimator",
    "q_sample": "core.estimator",
    "schedule_names": "core.schedules",
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

"""Diffusion Classifier: a pretrained conditional diffusion model as a zero-shot image classifier."""

from .errors import UserInputError
from .estimator import ErrorLedger, Trial, per_sample_loss, q_sample
from .models.base import DiffusionAdapter
from .noise import NoiseBank
from .pipeline import ClassificationResult, DiffusionClassifier
from .schedules import PUBLISHED, Full, Racing, Staged, count_calls, get_schedule, schedule_names

__version__ = "0.1.0"

__all__ = [
    "ClassificationResult",
    "DiffusionAdapter",
    "DiffusionClassifier",
    "ErrorLedger",
    "Full",
    "NoiseBank",
    "PUBLISHED",
    "Racing",
    "Staged",
    "Trial",
    "UserInputError",
    "count_calls",
    "get_schedule",
    "per_sample_loss",
    "q_sample",
    "schedule_names",
]

"""Candidates: the conditions the model is asked about, each tied to the label it stands for.

A label becomes one prompt through a template ("a photo of a {}."), or several prompts from a
prompts CSV (columns prompt,classname,classidx, as the published files); the best prompt's label wins.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UserInputError

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class Candidates:
    """conditions[i] is what the model is conditioned on; labels[i] is the label it votes for."""

    labels: tuple[str, ...]
    conditions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.conditions)

    @property
    def unique_labels(self) -> list[str]:
        return list(dict.fromkeys(self.labels))

    def keys(self) -> list[str]:
        """One name per candidate: its label, or its condition where a label has several."""
        one_each = len(self.unique_labels) == len(self.labels)
        return list(self.labels) if one_each else list(self.conditions)


def check_labels(labels: list[str]) -> list[str]:
    labels = [str(x).strip() for x in labels]
    if not labels:
        raise UserInputError("no labels given: pass --labels, --labels-file or --prompts-file")
    if "" in labels:
        raise UserInputError("empty label in the label list")
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UserInputError(f"duplicate label {dup[0]!r} in the label list")
    return labels


def from_template(labels: list[str], template: str = DEFAULT_TEMPLATE) -> Candidates:
    if "{}" not in template:
        raise UserInputError(f"template {template!r} has no '{{}}' for the label")
    labels = check_labels(labels)
    return Candidates(tuple(labels), tuple(template.format(x) for x in labels))


def from_labels(labels: list[str]) -> Candidates:
    """Conditions that are the labels themselves (class-conditional models)."""
    labels = check_labels(labels)
    return Candidates(tuple(labels), tuple(labels))


def read_labels_file(path: str | Path) -> list[str]:
    """One label per line; blank lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"labels file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_prompts_csv(path: str | Path) -> Candidates:
    """A prompts CSV with columns prompt,classname (classidx optional)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"prompts file not found: {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"prompt", "classname"} <= set(rows[0]):
        raise UserInputError(f"prompts file {path} needs a header with columns prompt,classname")
    # A row repeated whole is kept once (the published ImageNet table lists 'missile' and 'sunglasses' twice);
    # one prompt for two classes is ambiguous.
    pairs = list(dict.fromkeys((r["prompt"], r["classname"]) for r in rows))
    prompts = [p for p, _ in pairs]
    dup = sorted({p for p in prompts if prompts.count(p) > 1})
    if dup:
        raise UserInputError(f"prompt {dup[0]!r} stands for two classes in {path}")
    return Candidates(tuple(c for _, c in pairs), tuple(prompts))


def published_prompts(dataset: str) -> Path:
    """Path of a published prompts CSV shipped with the package (cifar10, pets, imagenet, ...)."""
    name = {"cifar100": "cifar100_blurry"}.get(dataset, dataset)
    path = resources.files("diffusion_classifier.data") / "prompts" / f"{name}_prompts.csv"
    if not path.is_file():
        raise UserInputError(f"no published prompts for dataset {dataset!r}")
    return Path(str(path))

"""Candidates: the conditions the model is asked about, each tied to the class (index and name) it stands for.

A label becomes one prompt through a template ("a photo of a {}."), or several prompts from a
prompts CSV (columns prompt,classname,classidx, as the published files); the best prompt's class wins.
Classes are keyed by their index: the published ImageNet table gives two classes the same prompt and
name ("a photo of a missile.", classidx 657 and 744), and both stay candidates.
"""

from __future__ import annotations

import csv
import io
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UserInputError

DEFAULT_TEMPLATE = "a photo of a {}."
SHOWN_CHARS = 40  # a label longer than this is shortened in messages


def shown(text: str) -> str:
    """A label as error messages show it: quoted, escaped (one line), at most SHOWN_CHARS characters."""
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…")


@dataclass(frozen=True)
class Candidates:
    """conditions[i] is what the model is conditioned on; class_ids[i] and labels[i] the class it votes for.

    class_ids default to the labels' order of first appearance (0, 1, ...), as for --labels and templates.
    Two candidates may share a condition and a label if their class ids differ; a class has one name.
    """

    labels: tuple[str, ...]
    conditions: tuple[str, ...]
    class_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.class_ids:
            order = {name: k for k, name in enumerate(dict.fromkeys(self.labels))}
            object.__setattr__(self, "class_ids", tuple(order[x] for x in self.labels))
        if not len(self.labels) == len(self.conditions) == len(self.class_ids):
            raise ValueError("Candidates needs one label, condition and class id per candidate")
        names: dict[int, str] = {}
        for k, name in zip(self.class_ids, self.labels):
            if names.setdefault(k, name) != name:
                raise UserInputError(f"class {k} has two names, {shown(names[k])} and {shown(name)}")
        pairs = list(zip(self.conditions, self.class_ids))
        if len(set(pairs)) < len(pairs):
            cond, k = next(p for p in pairs if pairs.count(p) > 1)
            raise UserInputError(f"prompt {shown(cond)} is given twice for class {k}: list each prompt once per class")

    def __len__(self) -> int:
        return len(self.conditions)

    @property
    def classes(self) -> list[int]:
        """The class ids, each once, in order of first appearance."""
        return list(dict.fromkeys(self.class_ids))

    @property
    def class_names(self) -> dict[int, str]:
        """class id -> its name, in order of first appearance."""
        return dict(zip(self.class_ids, self.labels))

    def subset(self, rows: list[int]) -> Candidates:
        return Candidates(*(tuple(col[i] for i in rows) for col in (self.labels, self.conditions, self.class_ids)))

    def keys(self) -> list[str]:
        """One distinct name per candidate (the keys of a result's errors).

        The class name when each class has one candidate, else the condition (prompt); when these names
        repeat, every key is "classidx:name" (the published ImageNet table: "0:tench", "657:missile").
        """
        one_each = len(self.classes) == len(self)
        names = self.labels if one_each else self.conditions
        if len(set(names)) == len(names):
            return list(names)
        return [f"{k}:{name}" for k, name in zip(self.class_ids, names)]


def check_labels(labels: list[str]) -> list[str]:
    labels = [str(x).strip() for x in labels]
    if not labels:
        raise UserInputError("no labels given: pass --labels, --labels-file or --prompts-file")
    if "" in labels:
        raise UserInputError("empty label in the label list: remove it or give it a name")
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise UserInputError(f"duplicate label {shown(dup)} in the label list: give each label once")
    return labels


def check_template(template: str) -> str:
    """A template must hold exactly one "{}" (the label) and no other braces; "{{" and "}}" are literal braces."""
    fix = 'use exactly one "{}" where the label goes, e.g. "a photo of a {}." (write "{{" / "}}" for a brace)'
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError:  # a single "{" or "}"
        raise UserInputError(f"template {shown(template)} has a stray brace: {fix}") from None
    if not fields:
        raise UserInputError(f"template {shown(template)} has no '{{}}' for the label: {fix}")
    if fields != [("", "", None)]:
        raise UserInputError(f"template {shown(template)} must have one plain '{{}}' field: {fix}")
    return template


def from_template(
    labels: list[str], template: str = DEFAULT_TEMPLATE, class_ids: Iterable[int] | None = None
) -> Candidates:
    """One prompt per label. class_ids: the labels' class indices when two classes may share a name
    (a dataset's classes); else the labels must differ and their ids are 0..n-1 in list order."""
    template = check_template(template)
    if class_ids is None:
        labels = check_labels(labels)
    ids = tuple(class_ids) if class_ids is not None else ()
    return Candidates(tuple(labels), tuple(template.format(x) for x in labels), ids)


def from_labels(labels: list[str]) -> Candidates:
    """Conditions that are the labels themselves (class-conditional models); class ids 0..n-1 in list order."""
    labels = check_labels(labels)
    return Candidates(tuple(labels), tuple(labels))


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file (a byte-order mark is allowed); a missing or non-UTF-8 file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserInputError(f"{what} {path} is not UTF-8 text (line {line}): save it as UTF-8") from None


def read_labels_file(path: str | Path) -> list[str]:
    """One label per line; blank lines ignored."""
    labels = [line.strip() for line in read_text(path, "labels file").splitlines() if line.strip()]
    if not labels:
        raise UserInputError(f"labels file {path} has no labels: write one label per line")
    return labels


def read_prompts_csv(path: str | Path) -> Candidates:
    """A prompts CSV with columns prompt,classname and optionally classidx (as the published files)."""
    rows = csv.reader(io.StringIO(read_text(path, "prompts file"), newline=""))
    header = [h.strip() for h in next(rows, [])]
    if not {"prompt", "classname"} <= set(header):
        raise UserInputError(f"prompts file {path} needs a header row with columns prompt,classname[,classidx]")
    col = {name: header.index(name) for name in ("prompt", "classname", "classidx") if name in header}
    prompts, names, ids = [], [], []
    seen: dict[tuple[str, int | str], int] = {}  # (prompt, class) -> line
    for row in rows:
        if not any(x.strip() for x in row):
            continue  # blank line
        where = f"prompts file {path}, line {rows.line_num}"
        if len(row) != len(header):
            raise UserInputError(
                f"{where}: {len(row)} fields where the header has {len(header)}; quote a prompt that holds a comma"
            )
        prompt, name = row[col["prompt"]], row[col["classname"]].strip()
        if not prompt.strip() or not name:
            raise UserInputError(f"{where}: empty {'prompt' if not prompt.strip() else 'classname'}")
        if "classidx" in col:
            ids.append(_class_index(row[col["classidx"]], where))
        key = (prompt, ids[-1] if ids else name)
        if key in seen:
            raise UserInputError(f"{where}: the prompt of line {seen[key]} again for the same class; remove one")
        seen[key] = rows.line_num
        prompts.append(prompt)
        names.append(name)
    if not prompts:
        raise UserInputError(f"prompts file {path} has no rows: add one row per prompt under the header")
    return Candidates(tuple(names), tuple(prompts), tuple(ids))


def _class_index(text: str, where: str) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise UserInputError(f"{where}: classidx {shown(text)} is not a class index (0, 1, 2, ...)")
    return int(text)


def published_prompts(dataset: str) -> Path:
    """Path of a published prompts CSV shipped with the package (cifar10, pets, imagenet, ...)."""
    from .registry import DATASETS

    entry = DATASETS.get(dataset)
    name = entry.prompts if entry else f"{dataset}_prompts.csv"
    path = resources.files("diffusion_classifier.data") / "prompts" / name
    if not path.is_file():
        raise UserInputError(f"no published prompts for dataset {dataset!r}")
    return Path(str(path))

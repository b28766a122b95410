"""Files the user names: JSON files that must hold an object, and output paths checked before any work starts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserInputError

JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "true/false"}


def read_json_object(path: str | Path, fix: str = "fix or replace the file") -> dict[str, Any]:
    """The JSON object in a file; any other content (unreadable, not JSON, a list, ...) is one UserInputError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read {path} ({exc.__class__.__name__}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None
    if not isinstance(data, dict):
        kind = JSON_TYPES.get(type(data), "null")
        raise UserInputError(f"{path} holds a JSON {kind} where an object {{...}} belongs; {fix}")
    return data


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """A folder the command may create or write into; checked before a model loads, so no work is lost."""
    path = _named(path, flag)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    _check_can_create(path, flag)
    return path


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """A file the command may create or overwrite (its missing parent folders are created when it is written)."""
    path = _named(path, flag)
    if path.is_dir():
        raise UserInputError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'weights.json'}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserInputError(f"{flag} {path}: no permission to overwrite it; choose another file")
        return path
    _check_can_create(path.parent, flag, shown=path)
    return path


def _named(path: str | Path, flag: str) -> Path:
    """The path, refused when empty: Path("") is the working directory, never what an empty --out meant."""
    if not str(path).strip():
        raise UserInputError(f"{flag} is empty; give a path")
    return Path(path).expanduser()


def _check_can_create(folder: Path, flag: str, shown: Path | None = None) -> None:
    """The nearest existing folder on the way to `folder` must be a folder we may write in."""
    base = folder.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    shown = shown or folder
    if not base.is_dir():
        raise UserInputError(f"{flag} {shown}: {base} is a file, not a folder; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {shown}: no permission to write in {base}; choose another path")

"""JSON as the standard defines it: NaN and infinities, which json.dumps would write as bare NaN / Infinity
(no JSON parser but Python's accepts them), become null."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """obj with every non-finite float (at any depth of dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of finite(obj); allow_nan=False makes any non-finite number that slipped through an error."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)

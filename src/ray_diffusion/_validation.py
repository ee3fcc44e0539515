"""Turn pydantic's ValidationError into our typed errors with field-named messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(exc: ValidationError) -> str:
    """``"field: message; other: message"`` for every error pydantic found."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "request"
        msg = err["msg"]
        # Our validators raise ValueError("... e.g. 30"); pydantic prefixes "Value error, ".
        msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def parse_model(cls: type[M], data: Mapping[str, Any], error: Callable[[str], Exception]) -> M:
    """Validate ``data`` into ``cls``; on failure raise ``error(message)`` instead."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise error(describe_validation_error(exc)) from None

"""Turn pydantic validation errors into one message per problem, named by key path."""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel, ValidationError

__all__ = ["key_path", "validation_messages"]


def key_path(prefix: str, loc: Sequence[Any]) -> str:
    """``key_path("attacks[0]", ("rates", 2))`` -> ``attacks[0].rates[2]``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "<root>"


def validation_messages(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None,
                        owner: str | None = None) -> list[str]:
    """One ``key.path: what is wrong`` line per pydantic error."""
    messages = []
    for item in error.errors():
        loc = [part for part in item["loc"] if not _is_union_tag(part)]
        where = key_path(prefix, loc)
        kind = item["type"]
        value = item.get("input")
        if kind == "extra_forbidden":
            allowed = sorted(model.model_fields) if model is not None else []
            whose = f" of {owner}" if owner else ""
            expected = f"; expected one of: {', '.join(allowed)}" if allowed else ""
            messages.append(f"{where}: unknown parameter{whose}{expected}.")
        elif kind == "missing":
            messages.append(f"{where}: required key is missing.")
        elif kind in ("value_error", "assertion_error"):
            text = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            # a model-level check may name a more precise key itself
            messages.append(text if text.startswith(f"{where}.") else f"{where}: {text}")
        else:
            messages.append(f"{where}: {item['msg']}; got {_short(value)}.")
    return messages


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the member type name to the location of union errors
    return isinstance(part, str) and ("[" in part or part in {"float", "int", "str", "bool", "list", "dict"})


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

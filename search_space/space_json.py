"""A space document as JSON: the way in before validation, and the errors out of it.

* :func:`_prepare` turns JSON text or a dict into the plain dict the schema validates:
  it enforces :data:`MAX_DOCUMENT_BYTES` and :data:`MAX_JSON_DEPTH` (iteratively, so a
  hostile document cannot overflow the stack), rejects ``NaN`` / ``Infinity`` literals and
  decodes the strings ``"inf"`` / ``"-inf"`` into infinities.
* :func:`_encode_inf` is the reverse for output (:meth:`Space.to_dict`).
* :func:`_from_validation_error` turns pydantic's first error into a :class:`SpaceError`
  whose path is a JSON path into the document.

Contract: nothing here evaluates or unpickles input; every failure is a SpaceError.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .space_schema import MAX_DOCUMENT_BYTES, MAX_JSON_DEPTH, PARAM_TYPES, SpaceError


def _prepare(doc: Mapping[str, Any] | str) -> dict[str, Any]:
    """JSON text or dict -> plain dict, with the size / depth limits and "inf" decoded."""
    if isinstance(doc, str | bytes):
        text = doc.decode() if isinstance(doc, bytes) else doc
        size = len(text.encode())
        if size > MAX_DOCUMENT_BYTES:
            raise SpaceError(
                "", f"document is {size} bytes of JSON, the limit is {MAX_DOCUMENT_BYTES}"
            )
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise SpaceError("", f"document nests deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            raise SpaceError("", f"document is not valid JSON: {exc}") from None
    else:
        data = doc
    if not isinstance(data, Mapping):
        raise SpaceError("", f"document must be a JSON object, got {type(data).__name__}")
    _check_depth(data)
    try:
        size = len(json.dumps(data, separators=(",", ":")))
    except (TypeError, ValueError) as exc:
        raise SpaceError("", f"document is not JSON data: {exc}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise SpaceError("", f"document is {size} bytes of JSON, the limit is {MAX_DOCUMENT_BYTES}")
    # "inf" means infinity in values; the free-text fields keep their text
    return {k: v if k in ("name", "description") else _decode_inf(v) for k, v in data.items()}


def _reject_constant(name: str) -> Any:
    raise ValueError(f'{name} is not allowed; write the strings "inf" / "-inf"')


def _check_depth(data: Any) -> None:
    # iterative on purpose: a hostile document must not overflow the Python stack
    stack: list[tuple[Any, str, int]] = [(data, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise SpaceError(path, f"nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(value, Mapping | list | tuple):
                    stack.append((value, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(node, list | tuple):
            for i, value in enumerate(node):
                if isinstance(value, Mapping | list | tuple):
                    stack.append((value, f"{path}[{i}]", depth + 1))


def _decode_inf(obj: Any) -> Any:
    if isinstance(obj, str) and obj in ("inf", "+inf", "-inf"):
        return -math.inf if obj == "-inf" else math.inf
    if isinstance(obj, Mapping):
        return {k: _decode_inf(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_decode_inf(v) for v in obj]
    return obj


def _encode_inf(obj: Any) -> Any:
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: _encode_inf(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode_inf(v) for v in obj]
    return obj


_TAGS = frozenset(("param", "const", *PARAM_TYPES))


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TAGS:
            continue  # union tags are pydantic's bookkeeping, not document keys
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _from_validation_error(exc: ValidationError) -> SpaceError:
    err = exc.errors(include_url=False)[0]
    path = _loc_to_path(tuple(err["loc"]))
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "union_tag_invalid":
        tag_path = f"{path}.type" if path else "type"
        return SpaceError(
            tag_path, f"must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
        )
    if kind == "union_tag_not_found":
        return SpaceError(f"{path}.type" if path else "type", "is required")
    if kind == "missing":
        return SpaceError(path, "is required")
    if kind == "extra_forbidden":
        return SpaceError(path, "is not a known field")
    if kind == "value_error":
        return SpaceError(path, str(ctx.get("error", err["msg"])))
    msg = err["msg"]
    return SpaceError(path, f"is invalid: {msg[:1].lower()}{msg[1:]}")

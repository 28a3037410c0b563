"""Reading JSON request bodies for the API: one object, known keys only, errors users can act on.

Every failure raises ``ApiError(400, ...)`` naming the field at fault, so an API view never answers bad input
with a 500 (CONTRACT.md, HTTP API). Bodies over ``MAX_CONTENT_LENGTH`` (``HUB_MAX_BODY_BYTES``) are refused by
Flask with 413 before anything is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from flask import request

from hub.web.errors import ApiError


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON and which no database column can store.
    raise ValueError(f"{name} is not valid JSON")


def read_json_object(
    allowed_keys: Collection[str] | None = None, *, required_keys: Collection[str] = ()
) -> dict[str, Any]:
    """The request body as a JSON object.

    ``allowed_keys``: the keys a body may have (None: any); others are reported as ``{"<key>": "unknown
    field"}``. ``required_keys``: reported as ``{"<key>": "is required"}``. The Content-Type is not checked:
    callers authenticate with API keys, and many backends forget the header.
    """
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8-sig")
        body = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "The request body is not UTF-8 text.") from None
    except (json.JSONDecodeError, ValueError, RecursionError) as error:
        detail = f" (line {error.lineno}, column {error.colno})" if isinstance(error, json.JSONDecodeError) else ""
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON{detail}.") from None
    return check_object(body, "", allowed_keys, required_keys=required_keys)


def check_object(
    value: object,
    path: str,
    allowed_keys: Collection[str] | None = None,
    *,
    required_keys: Collection[str] = (),
) -> dict[str, Any]:
    """``value`` as a dict whose keys are all allowed; ``path`` (e.g. ``"user"``) prefixes the field names in
    errors (``"user.foo"``). The empty path means the whole body."""
    if not isinstance(value, dict):
        kind = type(value).__name__ if value is not None else "null"
        if path:
            raise ApiError(
                400, "invalid_field", f"`{path}` must be a JSON object.", {path: f"must be an object, not {kind}"}
            )
        raise ApiError(400, "invalid_body", f"The request body must be a JSON object, not {kind}.")
    prefix = f"{path}." if path else ""
    fields: dict[str, str] = {}
    if allowed_keys is not None:
        for key in value:
            if key not in allowed_keys:
                fields[f"{prefix}{key}"] = "unknown field"
    for key in required_keys:
        if value.get(key) is None:
            fields[f"{prefix}{key}"] = "is required"
    if fields:
        unknown = sorted(k for k, v in fields.items() if v == "unknown field")
        if unknown:
            allowed = ", ".join(sorted(allowed_keys or ()))
            message = f"Unknown field(s): {', '.join(unknown)}. Allowed{' in ' + path if path else ''}: {allowed}."
            raise ApiError(400, "unknown_fields", message, fields)
        raise ApiError(400, "missing_fields", f"Missing: {', '.join(sorted(fields))}.", fields)
    return value

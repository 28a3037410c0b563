"""CMP webhook payload adapters: parsed JSON body in, `ConsentSubmission`s out (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hub.cmp.adapters.didomi import parse_didomi
from hub.cmp.adapters.generic import parse_generic
from hub.cmp.adapters.ketch import parse_ketch
from hub.cmp.adapters.submission import ConsentSubmission, PayloadError
from hub.cmp.adapters.usercentrics import parse_usercentrics

__all__ = ["ADAPTERS", "ConsentSubmission", "PayloadError", "parse_payload"]

_Parser = Callable[..., list[ConsentSubmission]]
_PARSERS: Mapping[str, _Parser] = {
    "generic": parse_generic,
    "didomi": parse_didomi,
    "usercentrics": parse_usercentrics,
    "ketch": parse_ketch,
}
ADAPTERS = tuple(_PARSERS)


def parse_payload(
    adapter: str,
    body: Mapping[str, Any],
    *,
    purpose_map: Mapping[str, str],
    body_sha256: str,
    tcf_purpose_map: Mapping[str, Sequence[int]] | None = None,
) -> list[ConsentSubmission]:
    """Turn one webhook body into consent submissions, or raise `PayloadError` naming the offending field.

    `purpose_map` maps the CMP's purpose / vendor / service ids to hub purposes (for `generic`: optional renames);
    ids it does not know are listed in `ConsentSubmission.ignored`. `body_sha256` (hex digest of the raw body)
    is the idempotency key when the CMP sends no event id. `tcf_purpose_map` overrides
    `hub.consent.tcf.DEFAULT_TCF_PURPOSE_MAP` for purposes derived from a TC string.
    """
    parser = _PARSERS.get(adapter)
    if parser is None:
        raise ValueError(f"unknown CMP adapter {adapter!r} (known: {', '.join(ADAPTERS)})")
    if not isinstance(body, Mapping):
        raise PayloadError("", "the body must be a JSON object")
    if not body_sha256:
        raise ValueError("body_sha256 is required")
    return parser(body, purpose_map=purpose_map, body_sha256=body_sha256, tcf_purpose_map=tcf_purpose_map)

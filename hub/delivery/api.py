"""JSON API for destinations and the dead-letter queue (admin scope).

Destinations:
    GET  /api/v1/destinations                     list (tokens never shown: ``token_set``)
    POST /api/v1/destinations                     create {name, pixel_id, access_token, app_secret?, api_version?,
                                                  test_event_code?, allow_test_events_in_production?, is_default?}
    GET  /api/v1/destinations/{id}                one
    PATCH /api/v1/destinations/{id}               change any of those fields
    POST /api/v1/destinations/{id}/pause          {"reason": "..."}
    POST /api/v1/destinations/{id}/resume         its held events go out again
Dead letters:
    GET  /api/v1/dead-letters?destination_id=&code=&event=&since=&until=&before_id=&limit=
    GET  /api/v1/dead-letters/{event_id}          payload as sent, Meta's error and answer
    POST /api/v1/dead-letters/{event_id}/replay   re-decides consent, then pending (or blocked)
    POST /api/v1/dead-letters/{event_id}/discard  {"reason": "..."} → blocked, reason_code "discarded"
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, current_app, g, jsonify, request

from hub.auth.api import api_key_required
from hub.db import utcnow
from hub.delivery.dead_letters import (
    DeadLetterFilter,
    DeadLetterNotFound,
    dead_letter_document,
    dead_letter_summary,
    discard_dead_letter,
    get_dead_letter,
    list_dead_letters,
    replay_dead_letter,
)
from hub.delivery.destinations import (
    DESTINATION_FIELDS,
    DestinationInvalid,
    DestinationNotFound,
    create_destination,
    destination_document,
    get_destination,
    list_destinations,
    pause_destination,
    resume_destination,
    update_destination,
)
from hub.delivery.models import Destination
from hub.events.models import Event
from hub.web.database import get_session
from hub.web.errors import ApiError
from hub.web.json_body import read_json_object

bp = Blueprint("delivery_api", __name__, url_prefix="/api/v1")


def _actor() -> str:
    key = g.get("api_key")
    return f"api-key:{key.name}" if key is not None else "api"


def _invalid(exc: DestinationInvalid) -> ApiError:
    return ApiError(400, "invalid_destination", "The destination cannot be saved; see fields.", exc.errors)


def _destination_or_404(destination_id: int) -> Destination:
    try:
        return get_destination(get_session(), destination_id)
    except DestinationNotFound:
        raise ApiError(404, "not_found", f"No destination has the id {destination_id}.") from None


@bp.get("/destinations")
@api_key_required("admin")
def destinations_index() -> Response:
    return jsonify(destinations=[destination_document(d) for d in list_destinations(get_session())])


@bp.post("/destinations")
@api_key_required("admin")
def destinations_create() -> tuple[Response, int]:
    body = read_json_object(DESTINATION_FIELDS)
    try:
        destination = create_destination(
            get_session(),
            current_app.extensions["hub.encryptor"],
            body,
            settings=current_app.extensions["hub.settings"],
            actor=_actor(),
        )
    except DestinationInvalid as exc:
        raise _invalid(exc) from None
    return jsonify(destination_document(destination)), 201


@bp.get("/destinations/<int:destination_id>")
@api_key_required("admin")
def destinations_show(destination_id: int) -> Response:
    return jsonify(destination_document(_destination_or_404(destination_id)))


@bp.patch("/destinations/<int:destination_id>")
@api_key_required("admin")
def destinations_update(destination_id: int) -> Response:
    _destination_or_404(destination_id)
    body = read_json_object(DESTINATION_FIELDS)
    try:
        destination = update_destination(
            get_session(),
            current_app.extensions["hub.encryptor"],
            destination_id,
            body,
            settings=current_app.extensions["hub.settings"],
            actor=_actor(),
        )
    except DestinationInvalid as exc:
        raise _invalid(exc) from None
    return jsonify(destination_document(destination))


@bp.post("/destinations/<int:destination_id>/pause")
@api_key_required("admin")
def destinations_pause(destination_id: int) -> Response:
    _destination_or_404(destination_id)
    body = read_json_object(("reason",)) if request.get_data() else {}
    reason = body.get("reason") or "paused by an administrator"
    if not isinstance(reason, str):
        raise ApiError(400, "invalid_field", "reason must be text.", {"reason": "must be text"})
    destination = pause_destination(get_session(), destination_id, reason, actor=_actor())
    return jsonify(destination_document(destination))


@bp.post("/destinations/<int:destination_id>/resume")
@api_key_required("admin")
def destinations_resume(destination_id: int) -> Response:
    _destination_or_404(destination_id)
    destination = resume_destination(get_session(), destination_id, actor=_actor())
    return jsonify(destination_document(destination))


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if not raw.lstrip("-").isdigit():
        raise ApiError(400, "invalid_query", f"{name} must be a whole number.", {name: "must be a whole number"})
    return int(raw)


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ApiError(
            400, "invalid_query", f"{name} must be an ISO 8601 time with a zone.", {name: "e.g. 2026-11-28T10:00:00Z"}
        )
    return value


@bp.get("/dead-letters")
@api_key_required("admin")
def dead_letters_index() -> Response:
    filters = DeadLetterFilter(
        destination_id=_int_arg("destination_id"),
        error_code=_int_arg("code"),
        source_event=request.args.get("event") or None,
        since=_time_arg("since"),
        until=_time_arg("until"),
        before_id=_int_arg("before_id"),
        limit=_int_arg("limit") or 50,
    )
    rows = list_dead_letters(get_session(), filters)
    next_before = rows[-1].id if len(rows) == max(1, min(filters.limit, 500)) else None
    return jsonify(dead_letters=[dead_letter_summary(e) for e in rows], next_before_id=next_before)


def _dead_or_404(event_id: str) -> Event:
    try:
        return get_dead_letter(get_session(), event_id)
    except DeadLetterNotFound:
        raise ApiError(404, "not_found", f"No dead letter has the event_id {event_id!r}.") from None


@bp.get("/dead-letters/<event_id>")
@api_key_required("admin")
def dead_letters_show(event_id: str) -> Response:
    event = _dead_or_404(event_id)
    response = jsonify(dead_letter_document(get_session(), current_app.extensions["hub.encryptor"], event))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/dead-letters/<event_id>/replay")
@api_key_required("admin")
def dead_letters_replay(event_id: str) -> Response:
    _dead_or_404(event_id)
    decision = replay_dead_letter(
        get_session(), event_id, now=utcnow(), settings=current_app.extensions["hub.settings"], actor=_actor()
    )
    return jsonify(
        event_id=event_id,
        status="pending" if decision.sends or decision.outcome == "wait" else "blocked",
        decision={
            "outcome": decision.outcome,
            "reason_code": decision.reason_code,
            "explanation": decision.explanation,
        },
    )


@bp.post("/dead-letters/<event_id>/discard")
@api_key_required("admin")
def dead_letters_discard(event_id: str) -> Response:
    _dead_or_404(event_id)
    body = read_json_object(("reason",), required_keys=("reason",))
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ApiError(400, "invalid_field", "Say why the event is discarded.", {"reason": "is required"})
    event = discard_dead_letter(get_session(), event_id, reason=reason, now=utcnow(), actor=_actor())
    return jsonify(event_id=event.event_id, status=event.status, decision=event.decision)

"""JSON API for events (CONTRACT.md): `POST /api/v1/events` and `GET /api/v1/events/{event_id}`."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from hub.auth.api import api_key_required
from hub.db import utcnow
from hub.events.services import MAX_BATCH, RequestFacts, event_document, find_event, ingest_events
from hub.web.database import get_session
from hub.web.errors import ApiError
from hub.web.json_body import read_json_object

bp = Blueprint("events_api", __name__, url_prefix="/api/v1")

# Sent by static/hub.js: the request comes straight from the person's browser, so its address and User-Agent
# are the person's (never true for a backend posting server-to-server).
BROWSER_HEADER = "X-Hub-Client"


def _request_facts() -> RequestFacts:
    browser = request.headers.get(BROWSER_HEADER, "").strip().lower() == "browser"
    return RequestFacts(
        browser=browser,
        remote_addr=request.remote_addr if browser else None,
        user_agent=request.headers.get("User-Agent") if browser else None,
        # Sec-GPC: the Global Privacy Control header; only "1" is defined (GPC spec §3.1).
        sec_gpc=request.headers.get("Sec-GPC", "").strip() == "1",
    )


@bp.post("/events")
@api_key_required("ingest")
def post_events() -> tuple[Response, int]:
    body = read_json_object()
    if "events" in body:
        extra = {key: "unknown field; a batch body has only events" for key in body if key != "events"}
        if extra:
            raise ApiError(400, "unknown_fields", 'A batch is {"events": [...]} with nothing beside it.', extra)
        events = body["events"]
        if not isinstance(events, list):
            raise ApiError(
                400, "invalid_field", "`events` must be an array of event objects.", {"events": "must be an array"}
            )
        if not events:
            raise ApiError(400, "invalid_field", "`events` is empty; send at least one event.", {"events": "is empty"})
        if len(events) > MAX_BATCH:
            raise ApiError(
                413,
                "too_many_events",
                f"A batch holds at most {MAX_BATCH} events; this one has {len(events)}. Split it and send again.",
                {"events": f"has {len(events)} events; the limit is {MAX_BATCH}"},
            )
    else:
        events = [body]
    results = ingest_events(
        get_session(),
        current_app.extensions["hub.encryptor"],
        events,
        settings=current_app.extensions["hub.settings"],
        now=utcnow(),
        request=_request_facts(),
    )
    counter = current_app.extensions["hub.metrics"].events_ingested
    tally: dict[str, int] = {}
    for result in results:
        tally[result.status] = tally.get(result.status, 0) + 1
    for status, count in tally.items():
        counter.labels(result=status).inc(count)
    # 202: accepted into the outbox (committed by the request's commit point before this answer leaves);
    # forwarding to Meta happens later, after the consent decision.
    return jsonify(results=[result.as_dict() for result in results]), 202


@bp.get("/events/<event_id>")
@api_key_required("ingest")
def get_event(event_id: str) -> Response:
    event = find_event(get_session(), event_id)
    if event is None:
        raise ApiError(404, "not_found", f"No event has the event_id {event_id!r}.")
    response = jsonify(event_document(event))
    response.headers["Cache-Control"] = "no-store"
    return response

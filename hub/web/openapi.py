"""The OpenAPI 3.1 document for hub's JSON API (``GET /api/openapi.json``).

Written by hand from CONTRACT.md; a test checks that every ``/api/`` route the app serves is described here, so
the document cannot silently fall behind the code.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from hub.delivery.payload import ACTION_SOURCES

bp = Blueprint("openapi", __name__)

USER_FIELDS = (
    "email",
    "phone",
    "external_id",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip",
    "country",
    "date_of_birth",
    "gender",
    "fbp",
    "fbc",
    "ip_address",
    "user_agent",
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthenticated"},
}
ADMIN_ERRORS = {**ERRORS, "403": {"$ref": "#/components/responses/Forbidden"}}
NOT_FOUND = {"404": {"$ref": "#/components/responses/NotFound"}}
PROFILE_ID = {"name": "profile_id", "in": "path", "required": True, "schema": {"type": "string"}}
DESTINATION_ID = {"name": "destination_id", "in": "path", "required": True, "schema": {"type": "integer"}}
EVENT_ID = {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}
REASON_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}}
        }
    },
}


def _schemas() -> dict[str, Any]:
    string = {"type": "string"}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": string,
                        "message": string,
                        "fields": {
                            "type": "object",
                            "description": "field path (e.g. `user.email`, `events[3].occurred_at`) → problem",
                            "additionalProperties": string,
                        },
                    },
                }
            },
        },
        "User": {
            "type": "object",
            "additionalProperties": False,
            "description": "Identifiers and traits; hub normalizes and hashes them as Meta documents. "
            "A 64-hex SHA-256 value is taken as already hashed.",
            "properties": {name: string for name in USER_FIELDS} | {"phone": {"type": ["string", "integer"]}},
        },
        "Context": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "region": {"type": "string", "description": "ISO 3166-1 alpha-2 or ISO 3166-2, e.g. `DE`, `US-CA`"},
                "gpc": {"type": ["boolean", "null"], "description": "Global Privacy Control signal"},
            },
        },
        "Event": {
            "type": "object",
            "additionalProperties": False,
            "required": ["event", "occurred_at"],
            "properties": {
                "event_id": {
                    "type": ["string", "integer"],
                    "maxLength": 255,
                    "description": "Shared with the browser Pixel's eventID so Meta de-duplicates; generated "
                    "when absent. A repeated event_id is a duplicate and changes nothing.",
                },
                "event": {"type": "string", "maxLength": 255},
                "occurred_at": {
                    "type": ["string", "integer", "number"],
                    "description": "ISO 8601 with an offset, or Unix seconds",
                },
                "action_source": {"type": "string", "enum": list(ACTION_SOURCES)},
                "source_url": {"type": "string", "format": "uri"},
                "user": _ref("User"),
                "properties": {"type": "object"},
                "context": _ref("Context"),
            },
        },
        "EventResult": {
            "type": "object",
            "properties": {
                "index": {"type": "integer"},
                "event_id": string,
                "status": {"type": "string", "enum": ["accepted", "duplicate", "rejected"]},
                "profile_id": {"type": ["string", "null"]},
                "errors": {"type": "object", "additionalProperties": string},
            },
        },
        "EventStatus": {
            "type": "object",
            "description": "Delivery status and the forwarding decision, explained.",
            "properties": {
                "event_id": string,
                "status": {"type": "string", "enum": ["pending", "sent", "blocked", "retrying", "dead"]},
                "decision": {"type": ["object", "null"]},
                "attempts": {"type": "integer"},
            },
        },
        "ConsentRequest": {
            "type": "object",
            "required": ["user", "purposes", "collected_at"],
            "properties": {
                "user": _ref("User"),
                "purposes": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "enum": ["granted", "denied"]},
                },
                "collected_at": {"type": ["string", "integer"]},
                "source": string,
                "context": _ref("Context"),
            },
        },
        "Profile": {"type": "object", "description": "Profile, identities (kind and hash), traits, consent, events."},
        "Destination": {
            "type": "object",
            "description": "A Meta pixel. Tokens are write-only: reads show `token_set` / `app_secret_set`.",
            "properties": {
                "name": string,
                "pixel_id": string,
                "access_token": {"type": "string", "writeOnly": True},
                "app_secret": {"type": "string", "writeOnly": True},
                "api_version": {"type": "string", "pattern": "^v[0-9]+\\.0$", "default": "v26.0"},
                "test_event_code": {"type": ["string", "null"]},
                "allow_test_events_in_production": {"type": "boolean"},
                "is_default": {"type": "boolean"},
                "status": {"type": "string", "enum": ["active", "paused"], "readOnly": True},
            },
        },
        "DeadLetter": {
            "type": "object",
            "description": "A dead event: the payload as sent, Meta's error and full answer.",
        },
        "ConfigDocument": {
            "type": "object",
            "description": "Mappings, region rules, destinations (no secrets), CMP sources and custom purposes.",
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hub",
            "version": "1",
            "description": "Consent-aware customer data hub: events, identities and consent in; Meta CAPI out.",
        },
        "security": [{"apiKey": []}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "hub API key"}},
            "schemas": _schemas(),
            "responses": {
                name: _json(_ref("Error"), text)
                for name, text in (
                    ("BadRequest", "Invalid input; `fields` names each problem"),
                    ("Unauthenticated", "Missing or unknown API key"),
                    ("Forbidden", "The API key's scope is too narrow"),
                    ("NotFound", "No such object"),
                )
            },
        },
        "paths": {
            "/api/v1/events": {
                "post": {
                    "summary": "Ingest one event or a batch of up to 1,000",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        _ref("Event"),
                                        {
                                            "type": "object",
                                            "required": ["events"],
                                            "properties": {
                                                "events": {"type": "array", "maxItems": 1000, "items": _ref("Event")}
                                            },
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "properties": {"results": {"type": "array", "items": _ref("EventResult")}},
                            },
                            "Accepted event by event",
                        ),
                        **ERRORS,
                        "413": {"$ref": "#/components/responses/BadRequest"},
                    },
                }
            },
            "/api/v1/events/{event_id}": {
                "get": {
                    "summary": "Status, decision and delivery of one event",
                    "parameters": [{"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json(_ref("EventStatus")), **ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/identify": {
                "post": {
                    "summary": "Resolve identifiers to a profile, merging profiles they link",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"user": _ref("User"), "context": _ref("Context")},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"type": "object"}, "The profile and any profiles merged into it"),
                        **ERRORS,
                        "409": {"$ref": "#/components/responses/BadRequest"},
                    },
                }
            },
            "/api/v1/profiles": {
                "get": {
                    "summary": "Look a profile up by email, phone or external_id (normalized like ingestion)",
                    "parameters": [
                        {"name": name, "in": "query", "schema": {"type": "string"}}
                        for name in ("email", "phone", "external_id")
                    ],
                    "responses": {"200": _json(_ref("Profile")), **ADMIN_ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/profiles/{profile_id}": {
                "get": {
                    "summary": "A profile: identities, traits, current consent, recent events",
                    "parameters": [PROFILE_ID],
                    "responses": {"200": _json(_ref("Profile")), **ADMIN_ERRORS, **NOT_FOUND},
                },
                "delete": {
                    "summary": "Erase a person; identifier hashes are kept on a suppression list",
                    "parameters": [PROFILE_ID],
                    "responses": {"200": _json({"type": "object"}, "What was removed and kept"), **ADMIN_ERRORS},
                },
            },
            "/api/v1/profiles/{profile_id}/export": {
                "get": {
                    "summary": "Everything held about the person",
                    "parameters": [PROFILE_ID],
                    "responses": {"200": _json({"type": "object"}), **ADMIN_ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/consent": {
                "post": {
                    "summary": "Record consent collected by a first-party backend",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ConsentRequest")}},
                    },
                    "responses": {
                        "201": _json({"type": "object"}, "Recorded"),
                        "200": _json({"type": "object"}, "Already recorded (idempotent)"),
                        **ERRORS,
                    },
                }
            },
            "/api/v1/destinations": {
                "get": {
                    "summary": "List destinations",
                    "responses": {"200": _json({"type": "object"}), **ADMIN_ERRORS},
                },
                "post": {
                    "summary": "Create a destination (the token is encrypted at rest and never returned)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Destination")}}},
                    "responses": {"201": _json(_ref("Destination"), "Created"), **ADMIN_ERRORS},
                },
            },
            "/api/v1/destinations/{destination_id}": {
                "get": {
                    "summary": "One destination",
                    "parameters": [DESTINATION_ID],
                    "responses": {"200": _json(_ref("Destination")), **ADMIN_ERRORS, **NOT_FOUND},
                },
                "patch": {
                    "summary": "Change a destination (e.g. a new access token)",
                    "parameters": [DESTINATION_ID],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Destination")}}},
                    "responses": {"200": _json(_ref("Destination")), **ADMIN_ERRORS, **NOT_FOUND},
                },
            },
            "/api/v1/destinations/{destination_id}/pause": {
                "post": {
                    "summary": "Pause delivery; events wait, nothing is lost",
                    "parameters": [DESTINATION_ID],
                    "requestBody": REASON_BODY,
                    "responses": {"200": _json(_ref("Destination")), **ADMIN_ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/destinations/{destination_id}/resume": {
                "post": {
                    "summary": "Resume delivery; held events go out again",
                    "parameters": [DESTINATION_ID],
                    "responses": {"200": _json(_ref("Destination")), **ADMIN_ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/dead-letters": {
                "get": {
                    "summary": "Dead letters, newest first",
                    "parameters": [
                        {"name": name, "in": "query", "schema": {"type": "string"}}
                        for name in ("destination_id", "code", "event", "since", "until", "before_id", "limit")
                    ],
                    "responses": {"200": _json({"type": "object"}), **ADMIN_ERRORS},
                }
            },
            "/api/v1/dead-letters/{event_id}": {
                "get": {
                    "summary": "The exact payload sent and Meta's answer",
                    "parameters": [EVENT_ID],
                    "responses": {"200": _json(_ref("DeadLetter")), **ADMIN_ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/dead-letters/{event_id}/replay": {
                "post": {
                    "summary": "Re-decide consent, then queue the event again (or block it)",
                    "parameters": [EVENT_ID],
                    "responses": {"200": _json({"type": "object"}), **ADMIN_ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/dead-letters/{event_id}/discard": {
                "post": {
                    "summary": "Discard with a reason (the event becomes blocked, reason `discarded`)",
                    "parameters": [EVENT_ID],
                    "requestBody": REASON_BODY,
                    "responses": {"200": _json({"type": "object"}), **ADMIN_ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/config": {
                "get": {
                    "summary": "Export configuration (never secrets)",
                    "responses": {"200": _json(_ref("ConfigDocument")), **ADMIN_ERRORS},
                },
                "put": {
                    "summary": "Import configuration as a whole (all or nothing); `?dry_run=1` shows the diff",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ConfigDocument")}},
                    },
                    "responses": {"200": _json({"type": "object"}, "The diff applied"), **ADMIN_ERRORS},
                },
            },
        },
    }


@bp.get("/api/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi_document())

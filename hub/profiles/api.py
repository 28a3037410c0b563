"""JSON API for profiles (CONTRACT.md, HTTP API): identify, read, look up, export and erase."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from hub.auth.api import api_key_required
from hub.config import Settings
from hub.db import utcnow
from hub.encryption import FieldEncryptor
from hub.profiles.documents import profile_export, profile_summary
from hub.profiles.identifiers import identifier_candidates, parse_region
from hub.profiles.normalize import USER_FIELDS, IdentifierError
from hub.profiles.services import (
    LOOKUP_KINDS,
    ProfileNotFound,
    erase_profile,
    lookup_profile,
    prepare_identity,
    resolve_prepared,
)
from hub.web.database import get_session
from hub.web.errors import ApiError
from hub.web.json_body import check_object, read_json_object

bp = Blueprint("profiles_api", __name__, url_prefix="/api/v1")

IDENTIFY_KEYS = ("user", "context")
CONTEXT_KEYS = ("region",)
LOOKUP_PARAMS = (*LOOKUP_KINDS, "region")


def _settings() -> Settings:
    return current_app.extensions["hub.settings"]


def _encryptor() -> FieldEncryptor:
    return current_app.extensions["hub.encryptor"]


def _private(response: Response) -> Response:
    # Personal data: never kept by browsers or proxies.
    response.headers["Cache-Control"] = "no-store"
    return response


def _not_found(profile_id: str) -> ApiError:
    return ApiError(404, "not_found", f"No profile has the id {profile_id!r}.")


@bp.post("/identify")
@api_key_required("ingest")
def identify() -> Response:
    body = read_json_object(IDENTIFY_KEYS, required_keys=("user",))
    user = check_object(body["user"], "user", USER_FIELDS)
    context = check_object(body.get("context") or {}, "context", CONTEXT_KEYS)
    settings = _settings()
    prepared = prepare_identity(user, region=context.get("region"), settings=settings)
    if prepared.errors:
        # Nothing is stored when any field is unusable: the caller fixes the input and sends it again.
        raise ApiError(400, "invalid_fields", "Some fields cannot be used; nothing was stored.", prepared.errors)
    if not identifier_candidates(prepared.normalized):
        raise ApiError(
            400,
            "no_identifier",
            "Send at least one identifier: email, phone, external_id, fbp or fbc.",
            {"user": "has no identifier (email, phone, external_id, fbp or fbc)"},
        )
    resolution = resolve_prepared(
        get_session(), _encryptor(), prepared, source="api:identify", settings=settings, now=utcnow()
    )
    if resolution.conflict is not None:
        raise ApiError(
            409, "identity_conflict", resolution.conflict, {resolution.conflict_field or "user": resolution.conflict}
        )
    return jsonify(
        profile_id=resolution.profile_id,
        created=resolution.created,
        merged=list(resolution.merged),
        suppressed=resolution.suppressed,
        notes=list(resolution.notes),
    )


@bp.get("/profiles/<profile_id>")
@api_key_required("admin")
def get_profile(profile_id: str) -> Response:
    try:
        return _private(jsonify(profile_summary(get_session(), _encryptor(), profile_id, utcnow())))
    except ProfileNotFound:
        raise _not_found(profile_id) from None


@bp.get("/profiles")
@api_key_required("admin")
def find_profile() -> Response:
    unknown = {name: "unknown query parameter" for name in request.args if name not in LOOKUP_PARAMS}
    if unknown:
        raise ApiError(400, "unknown_parameters", f"Look profiles up by one of {', '.join(LOOKUP_KINDS)}.", unknown)
    given = [kind for kind in LOOKUP_KINDS if kind in request.args]
    if len(given) != 1:
        fields = {kind: "give exactly one of these" for kind in (given or LOOKUP_KINDS)}
        raise ApiError(400, "invalid_query", f"Give exactly one of {', '.join(LOOKUP_KINDS)}.", fields)
    kind = given[0]
    region = request.args.get("region")
    if region is not None:
        try:
            region = parse_region(region)
        except ValueError as error:
            raise ApiError(400, "invalid_query", f"region: {error}.", {"region": str(error)}) from None
    session = get_session()
    try:
        profile_id = lookup_profile(session, kind, request.args[kind], settings=_settings(), region=region)
    except IdentifierError as error:
        raise ApiError(400, "invalid_query", f"{kind}: {error.message}", {kind: error.message}) from None
    if profile_id is None:
        raise ApiError(404, "not_found", f"No profile holds this {kind}.")
    return _private(jsonify(profile_summary(session, _encryptor(), profile_id, utcnow())))


@bp.get("/profiles/<profile_id>/export")
@api_key_required("admin")
def export_profile(profile_id: str) -> Response:
    try:
        document = profile_export(get_session(), _encryptor(), profile_id, utcnow())
    except ProfileNotFound:
        raise _not_found(profile_id) from None
    response = jsonify(document)
    response.headers["Content-Disposition"] = f'attachment; filename="profile-{document["id"]}.json"'
    return _private(response)


@bp.delete("/profiles/<profile_id>")
@api_key_required("admin")
def delete_profile(profile_id: str) -> Response:
    reason = (request.args.get("reason") or "").strip() or "erasure requested through the API"
    try:
        summary = erase_profile(get_session(), profile_id, reason[:255], now=utcnow())
    except ProfileNotFound:
        raise _not_found(profile_id) from None
    return jsonify(erased=summary.as_dict())

"""`GET /api/v1/config` and `PUT /api/v1/config` (admin scope): the config-as-code document over HTTP.

JSON by default; YAML when the request's Content-Type (PUT) or Accept header / `?format=yaml` (GET) asks for it.
`PUT ...?dry_run=1` answers the diff without changing anything.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from hub.auth.api import api_key_required
from hub.configuration.document import DocumentError, dump_document, is_yaml_type, parse_document
from hub.configuration.services import export_config, import_config
from hub.web.database import get_session
from hub.web.errors import ApiError

bp = Blueprint("configuration_api", __name__, url_prefix="/api/v1")

YAML_TYPE = "application/yaml"
_TRUE = ("1", "true", "yes", "on")


def _wants_yaml() -> bool:
    if request.args.get("format", "").lower() in ("yaml", "yml"):
        return True
    # JSON first: a client sending `Accept: */*` (curl, requests) gets the JSON the API promises.
    best = request.accept_mimetypes.best_match(["application/json", YAML_TYPE, "text/yaml"])
    return best in (YAML_TYPE, "text/yaml")


@bp.get("/config")
@api_key_required("admin")
def get_config() -> Response:
    document = export_config(get_session())
    if _wants_yaml():
        return Response(dump_document(document, yaml_format=True), mimetype=YAML_TYPE)
    return jsonify(document)


@bp.put("/config")
@api_key_required("admin")
def put_config() -> tuple[Response, int]:
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_document", "The document is not UTF-8 text.") from None
    if not text.strip():
        raise ApiError(400, "invalid_document", "The request body is empty; send the configuration document.")
    try:
        document = parse_document(text, yaml_format=is_yaml_type(request.content_type))
    except DocumentError as error:
        raise ApiError(400, "invalid_document", error.message, error.fields) from None
    dry_run = request.args.get("dry_run", "").lower() in _TRUE
    key = g.get("api_key")
    actor = f"api-key:{key.name}" if key is not None else "api"
    result = import_config(
        get_session(), document, dry_run=dry_run, actor=actor, encryptor=current_app.extensions["hub.encryptor"]
    )
    if result.errors:
        raise ApiError(
            400,
            "invalid_config",
            f"The document has {len(result.errors)} problem(s); nothing was changed.",
            result.errors,
        )
    return jsonify(result.as_dict()), 200

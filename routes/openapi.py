"""The API's OpenAPI 3.0 description, served as written in routes/openapi.json."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)
SPEC = resources.files("routes").joinpath("openapi.json").read_bytes()


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(SPEC, content_type="application/json")

"""The API docs page (`GET /docs`): Swagger UI served by the adapter itself, so that it works offline.

FastAPI's own page loads Swagger UI's script and style from a public CDN and its favicon from FastAPI's site:
on the private networks and air-gapped clusters where a self-hosted reranker lives, it stays blank. Here every
file the page needs comes from the adapter: Swagger UI's assets from the pinned ``fastapi-swagger`` package
(adapter/requirements.txt), which ships swagger-ui-dist's built files.

The OpenAPI document is completed for the page: each rerank route gets the request bodies its clients send as
named examples (the first is what "Try it out" starts from), and, with API_KEY set, a bearer security scheme
on the routes that check it, so that the page's "Authorize" button sends ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import fastapi_swagger
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"
ASSET_DIRECTORY = Path(fastapi_swagger.__file__).parent / "resources"
# The files of the package the page uses, and their media types; nothing else there is served.
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
BEARER_SCHEME = "bearer"
# Swagger UI's options: "Try it out" open at once; the key kept across reloads of the page (in the browser's
# local storage, as a token typed into any page would be); no validator badge (it would call a public service).
SWAGGER_UI_PARAMETERS = {"tryItOutEnabled": True, "persistAuthorization": True, "displayRequestDuration": True,
                         "validatorUrl": None, "defaultModelsExpandDepth": 0}

OpenApi = dict[str, Any]


def install_docs(app: FastAPI, examples: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 secured_paths: Collection[str]) -> None:
    """Serve the offline docs page on ``app`` (built with ``docs_url=None, redoc_url=None``).

    ``examples``: by path, the named OpenAPI example objects of its JSON body, the first shown first.
    ``secured_paths``: the paths that require ``Authorization: Bearer <API_KEY>``; empty when no key is set.
    """
    app.openapi = completed_openapi(app.openapi, examples, secured_paths)  # type: ignore[method-assign]

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
                                   swagger_ui_parameters=SWAGGER_UI_PARAMETERS)

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, f"no docs asset {name!r}")
        return FileResponse(ASSET_DIRECTORY / name, media_type=ASSETS[name])


def completed_openapi(generate: Callable[[], OpenApi], examples: Mapping[str, Mapping[str, Mapping[str, Any]]],
                      secured_paths: Collection[str]) -> Callable[[], OpenApi]:
    """``generate`` (FastAPI's ``app.openapi``) with the examples and the security scheme set.

    Setting them is idempotent: FastAPI caches the document, and each call sets the same values again.
    """
    def openapi() -> OpenApi:
        schema = generate()
        for path, named in examples.items():
            for operation in schema["paths"][path].values():
                operation["requestBody"]["content"]["application/json"]["examples"] = dict(named)
        if secured_paths:
            schema.setdefault("components", {})["securitySchemes"] = {BEARER_SCHEME: {
                "type": "http", "scheme": "bearer", "description": "The adapter's API_KEY."}}
            for path in secured_paths:
                for operation in schema["paths"][path].values():
                    operation["security"] = [{BEARER_SCHEME: []}]
        return schema

    return openapi

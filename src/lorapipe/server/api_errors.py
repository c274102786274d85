"""Errors answered in A1111's JSON shape ({"error", "detail", "body", "errors"}) with their status code."""

from __future__ import annotations

import json
import math

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        error: str = "HTTPException",
        errors: str = "",
    ):
        super().__init__(detail)
        self.errors = errors
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}
        self.error = error


def a1111_error(
    status_code: int,
    detail: str,
    *,
    error: str = "HTTPException",
    errors: str = "",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "detail": detail, "body": "", "errors": errors}, status_code=status_code, headers=headers
    )


async def handle_api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return a1111_error(exc.status_code, exc.detail, error=exc.error, errors=exc.errors, headers=exc.headers)


async def handle_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 `detail` list, with values JSON cannot carry (NaN, infinities) echoed as text: FastAPI's own
    handler fails on them and the client got a 500 for a field it should be told about."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def handle_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    """Anything unforeseen: 500 in A1111's shape, one line, never a traceback to the client."""
    return a1111_error(500, "", error=type(exc).__name__, errors=json.dumps(str(exc))[1:-1][:500])

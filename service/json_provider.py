"""JSON responses written by orjson.

The agent routes answer 15 tickets per request, and stdlib ``json`` plus a
Python ISO formatter per timestamp was a tenth of their CPU. orjson writes
the same compact document in C, with datetimes in ISO 8601 as the API says:
PostgreSQL sessions run in UTC (service/config.py) and SQLite's naive values
are UTC, so every time comes out as ``...+00:00``.

Request bodies are read by orjson too: anything it refuses (nesting too deep,
a number out of range, invalid UTF-8) raises a ValueError, which Flask and
webargs answer as malformed JSON; the standard parser raised RecursionError
on deep nesting, which became a 500.
"""

from __future__ import annotations

import decimal
from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class OrjsonProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self._dump(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        body = self._dump(self._prepare_response_obj(args, kwargs)) + b"\n"
        return Response(body, mimetype=self.mimetype)

    def _dump(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=_default, option=_OPTIONS)
        except orjson.JSONEncodeError:
            # What orjson refuses (a lone surrogate in an echoed field name,
            # an integer over 64 bits) the standard encoder still writes.
            return super().dumps(obj).encode()

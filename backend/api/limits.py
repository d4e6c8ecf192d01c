"""Request body limits, enforced before any route parses a body: size (413), JSON nesting depth,
integer length and non-finite numbers (422), each answered with the API's JSON problem.

Python's ``json.loads`` (what Starlette and the routes use) accepts ``NaN`` / ``Infinity``, recurses
once per nesting level and converts every integer literal, however long, before anything can
validate it. :class:`BodyLimits` reads the body first (a declared ``content-length`` over the limit
is refused unread, a chunked body as soon as it passes the limit), checks the nesting depth on the
raw bytes, then parses a JSON body strictly once, and hands the body to the app unchanged."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.errors import BodyRefusedError

_OPENERS = frozenset(b"[{")
# A JSON string literal: brackets inside one do not nest anything.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True)
class Limits:
    """Bounds of a request body (``TEGRID_API_MAX_*`` settings)."""

    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_int_digits: int = 78  # a uint256 has 78 decimal digits


def is_json_content_type(value: str | None) -> bool:
    """``application/json`` or ``application/*+json``: the bodies FastAPI and the routes parse."""
    if not value:
        return False
    main = value.split(";", 1)[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


def nesting_depth_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether arrays/objects in ``raw`` nest deeper than ``max_depth`` (brackets inside strings
    do not count). Counted on the bytes, so a 50,000-level body never reaches the parser."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    for b in brackets:
        if b in _OPENERS:
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def _non_finite(name: str) -> Any:
    raise BodyRefusedError(
        422, "NON_FINITE_NUMBER", f"{name} is not a JSON number (NaN and Infinity are refused)"
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyRefusedError(422, "NON_FINITE_NUMBER", f"the number {text[:40]} is out of range")
    return value


def check_json(raw: bytes, limits: Limits) -> None:
    """Refuse a JSON body nested too deep, with an integer literal longer than
    ``max_int_digits`` digits (checked before conversion) or with NaN / Infinity. A body that is
    not JSON at all passes: the route's own parser reports it as it always has."""
    if nesting_depth_exceeds(raw, limits.max_json_depth):
        raise BodyRefusedError(
            422,
            "BODY_TOO_DEEP",
            f"the JSON body nests arrays/objects deeper than {limits.max_json_depth} levels",
        )

    def bounded_int(digits: str) -> int:
        if len(digits.lstrip("-")) > limits.max_int_digits:
            raise BodyRefusedError(
                422,
                "INTEGER_TOO_LONG",
                f"an integer in the JSON body has {len(digits.lstrip('-'))} digits; "
                f"at most {limits.max_int_digits} are accepted",
            )
        return int(digits)

    try:
        json.loads(
            raw, parse_int=bounded_int, parse_float=_finite_float, parse_constant=_non_finite
        )
    except BodyRefusedError:
        raise
    except (ValueError, RecursionError):  # not JSON (JSONDecodeError, UnicodeDecodeError)
        return


class BodyLimits:
    """ASGI middleware: read an HTTP request's body within ``limits.max_body_bytes`` (413 beyond),
    check a JSON body with :func:`check_json` (422), then run the app with the body replayed."""

    def __init__(self, app: ASGIApp, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or Limits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"] if k.lower() in _HEADERS}
        try:
            declared = headers.get(b"content-length")
            if declared is not None and _too_large(declared, self.limits.max_body_bytes):
                raise _too_large_error(self.limits.max_body_bytes)
            body = await self._read(receive)
            if body is None:
                return  # the client left before sending its whole body: nobody to answer
            if body and is_json_content_type(headers.get(b"content-type", b"").decode("latin-1")):
                check_json(body, self.limits)
        except BodyRefusedError as exc:
            await _send_problem(send, exc)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or ``None`` when the client disconnects first."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise _too_large_error(self.limits.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


_HEADERS = (b"content-length", b"content-type")


def _too_large(declared: bytes, max_bytes: int) -> bool:
    """A declared size over the limit (a malformed one is the server's to refuse; the bytes
    read are counted anyway)."""
    text = declared.strip()
    return text.isdigit() and (len(text) > 18 or int(text) > max_bytes)


def _too_large_error(max_bytes: int) -> BodyRefusedError:
    return BodyRefusedError(
        413, "BODY_TOO_LARGE", f"the request body is larger than {max_bytes} bytes"
    )


async def _send_problem(send: Send, exc: BodyRefusedError) -> None:
    body = json.dumps(
        {"detail": {"code": exc.code, "message": str(exc)}}, separators=(",", ":")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # a refused size may leave body bytes unread on the connection
                *([(b"connection", b"close")] if exc.status == 413 else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

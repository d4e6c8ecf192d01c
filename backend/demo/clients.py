"""How the demo talks to the market API as its members would: EIP-712 signing of the typed
messages, the domain from a ``GET .../eip712`` template, checked JSON answers, and the members'
order posts over kept HTTP/1.1 connections (``OrderClients``)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from backend.api.schemas import ConnectionMessage, DeviceMessage, FlexMessage, OrderMessage
from backend.chain import eip712
from backend.demo.config import DemoError


def sign_typed(domain: Any, primary: str, message: dict[str, Any], key: str) -> str:
    return str(eip712.sign_digest(domain.digest(primary, message), key))


MESSAGES: dict[str, type[BaseModel]] = {
    "Order": OrderMessage,
    "ConnectionRequest": ConnectionMessage,
    "DeviceRegistration": DeviceMessage,
    "FlexOffer": FlexMessage,
}


def signed_body(domain: Any, primary: str, message: dict[str, Any], key: str) -> dict[str, Any]:
    """The POST body of a signed message: the signature over ``message`` (Python ints) and the
    message in the API's JSON types (nonces and prices as decimal strings)."""
    wire = MESSAGES[primary].model_validate(message).model_dump(mode="json")
    return {"message": wire, "signature": sign_typed(domain, primary, message, key)}


def domain_args(domain: dict[str, Any]) -> dict[str, Any]:
    """``typed.Domain`` arguments from the domain of a ``GET .../eip712`` template."""
    return {
        "name": domain["name"],
        "version": domain["version"],
        "chain_id": int(domain["chainId"]),
        "verifying_contract": domain["verifyingContract"],
    }


def check_response(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise DemoError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


def check_list(response: httpx.Response, what: str) -> list[dict[str, Any]]:
    """A checked JSON answer that is a list of objects (``GET /flex``, ``/control/actions``)."""
    if response.status_code >= 400:
        raise DemoError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    body: list[dict[str, Any]] = response.json()
    return body


class OrderClients:
    """The members' order posts over plain keep-alive HTTP/1.1: one ``http.client`` connection
    per worker thread (httpx costs several times the CPU of the request itself), ``workers``
    threads kept for the whole run. Each member still signs its own order; the connection only
    carries it."""

    IDLE_S = 2.0  # a connection idle longer is opened anew before a post

    def __init__(self, api_url: str, workers: int = 8, timeout_s: float = 120.0) -> None:
        parts = urlsplit(api_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="order-client")

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        now = time.monotonic()
        if conn is not None and now - getattr(self._local, "used", now) > self.IDLE_S:
            conn.close()  # the server may drop it any moment (uvicorn keeps idle ones 5 s)
            conn = None
        self._local.used = now
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        """POST JSON; one reconnect when the kept connection was closed by the server."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request("POST", path, payload, headers)
                response = conn.getresponse()
                return response.status, response.read().decode()
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()

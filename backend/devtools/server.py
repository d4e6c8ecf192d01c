"""Run the API with uvicorn in a background thread (tests, bench, demo)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from backend.net import free_port


@dataclass
class ServerHandle:
    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def start_in_thread(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout_s: float = 60.0,
    **kwargs: Any,
) -> ServerHandle:
    """Start uvicorn (one worker) on ``port`` (a free one by default); returns once it serves."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, **kwargs
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tegrid-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    return ServerHandle(server, thread, host, port)

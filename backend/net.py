"""Local network helpers shared by every service launcher: free ports and reachability checks."""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def url_reachable(url: str, default_port: int, timeout_s: float = 0.5) -> bool:
    """Whether the host and port of ``url`` (``default_port`` when it names none) accept TCP."""
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or default_port, timeout_s)

"""Message transports with one interface: MQTT (any broker) and an in-process fallback.

A subscriber's handler gets a :class:`Message` and must call ``message.ack()`` once it has made the
message durable: with MQTT and ``manual_ack`` the broker keeps (and re-delivers) an un-acked QoS-1
message to a persistent session, so "persist before ack" means nothing is lost if the subscriber
dies in between.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend.iot.errors import TransportError

log = logging.getLogger(__name__)


def _noop() -> None:
    return None


@dataclass
class Message:
    topic: str
    payload: bytes
    ack: Callable[[], None] = field(default=_noop, repr=False)


Handler = Callable[[Message], None]


class Transport(Protocol):
    """What meters and the oracle need from a message bus."""

    kind: str

    def connect(self) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None: ...

    def flush(self, timeout_s: float = 30.0) -> bool: ...

    def subscribe(self, pattern: str, handler: Handler, qos: int = 1) -> None: ...

    def close(self) -> None: ...


def parse_broker_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise TransportError(f"broker URL must look like mqtt://host:port, got {url!r}")
    try:
        port = parsed.port or 1883
    except ValueError:
        raise TransportError(f"bad port in broker URL {url!r}") from None
    return parsed.hostname, port


class MqttTransport:
    """paho-mqtt client tuned for bursts: 1000 in-flight, unbounded queue, QoS 1.

    ``client_id`` + ``clean_session=False`` gives a persistent session (the broker keeps QoS-1
    messages published while we were away); ``manual_ack=True`` defers PUBACK until the handler
    calls ``ack``.
    """

    kind = "mqtt"

    def __init__(
        self,
        url: str,
        client_id: str = "",
        clean_session: bool = True,
        manual_ack: bool = False,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.host, self.port = parse_broker_url(url)
        if not clean_session and not client_id:
            raise TransportError("a persistent session needs a fixed client id")
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            manual_ack=manual_ack,
        )
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._connect_timeout_s = connect_timeout_s
        self._subs: dict[str, tuple[Handler, int]] = {}
        self._connected = threading.Event()
        self._unacked: set[int] = set()
        self._acked_early: set[int] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker refused connection: %s", reason)
            return
        for pattern, (_h, qos) in self._subs.items():
            client.subscribe(pattern, qos)
        self._connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        self._connected.clear()
        log.info("disconnected from broker %s: %s", self.url, reason)

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            if qos > 0:
                client.ack(mid, qos)

        # an exact subscription first (a device fleet subscribes one topic per device: a scan
        # over a thousand patterns per message was the simulator's bottleneck), then wildcards
        exact = self._subs.get(msg.topic)
        matches = (
            [exact]
            if exact is not None
            else [s for p, s in self._subs.items() if mqtt.topic_matches_sub(p, msg.topic)][:1]
        )
        for handler, _qos in matches:
            try:
                handler(Message(msg.topic, bytes(msg.payload), ack))
            except Exception:  # a handler bug must not kill the network thread
                log.exception("handler for %s failed", msg.topic)

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, _r: object, _p: object) -> None:
        with self._lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._acked_early.add(mid)
            if not self._unacked:
                self._idle.notify_all()

    def connect(self) -> None:
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise TransportError(f"MQTT broker {self.url} unreachable: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(self._connect_timeout_s):
            self._client.loop_stop()
            raise TransportError(f"MQTT broker {self.url} did not accept the connection")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos > 0:
            with self._lock:
                if info.mid in self._acked_early:
                    self._acked_early.discard(info.mid)
                else:
                    self._unacked.add(info.mid)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the broker has acknowledged everything we published (QoS >= 1)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._unacked:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.5))
        return True

    def subscribe(self, pattern: str, handler: Handler, qos: int = 1) -> None:
        self._subs[pattern] = (handler, qos)
        if self._connected.is_set():
            self._client.subscribe(pattern, qos)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class InProcessBroker:
    """A tiny broker inside this process: topic wildcards, QoS-1-like delivery, persistent sessions.

    Used where no MQTT broker is reachable (demo, laptop without Mosquitto). Messages live only in
    memory.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, _InProcSession] = {}

    def session(self, client_id: str, clean_session: bool) -> _InProcSession:
        with self._lock:
            existing = self._sessions.get(client_id)
            if existing is not None and not clean_session:
                return existing
            session = _InProcSession()
            self._sessions[client_id] = session
            return session

    def drop(self, client_id: str) -> None:
        with self._lock:
            self._sessions.pop(client_id, None)

    def publish(self, topic: str, payload: bytes) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.offer(topic, payload)


class _InProcSession:
    def __init__(self) -> None:
        self.patterns: dict[str, Handler] = {}
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def offer(self, topic: str, payload: bytes) -> None:
        if any(mqtt.topic_matches_sub(p, topic) for p in self.patterns):
            self.inbox.put((topic, payload))


class InProcessTransport:
    """Same interface as :class:`MqttTransport`, against an :class:`InProcessBroker`."""

    kind = "in-process"

    def __init__(
        self, broker: InProcessBroker, client_id: str = "", clean_session: bool = True
    ) -> None:
        self._broker = broker
        self._client_id = client_id or f"anon-{id(self)}"
        self._clean = clean_session
        self._session: _InProcSession | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def broker(self) -> InProcessBroker:
        """The broker this transport talks to (another client of it: ``InProcessTransport``)."""
        return self._broker

    def connect(self) -> None:
        self._session = self._broker.session(self._client_id, self._clean)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._deliver, name=f"inproc-{self._client_id}", daemon=True
        )
        self._thread.start()

    def _deliver(self) -> None:
        assert self._session is not None
        while not self._stop.is_set():
            try:
                topic, payload = self._session.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            for pattern, handler in list(self._session.patterns.items()):
                if mqtt.topic_matches_sub(pattern, topic):
                    try:
                        handler(Message(topic, payload))
                    except Exception:
                        log.exception("handler for %s failed", topic)
                    break

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._broker.publish(topic, payload)

    def flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def subscribe(self, pattern: str, handler: Handler, qos: int = 1) -> None:
        if self._session is None:
            raise TransportError("connect() before subscribe()")
        self._session.patterns[pattern] = handler

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._clean:
            self._broker.drop(self._client_id)


_DEFAULT_INPROC = InProcessBroker()


def default_inprocess_broker() -> InProcessBroker:
    """The process-wide in-process broker that fallback transports share."""
    return _DEFAULT_INPROC


def open_transport(
    url: str,
    client_id: str = "",
    clean_session: bool = True,
    manual_ack: bool = False,
    fallback: bool = False,
    on_fallback: Callable[[str], None] | None = None,
) -> Transport:
    """Connect over MQTT; with ``fallback`` use the in-process broker when the MQTT broker is
    unreachable.
    """
    transport: Transport = MqttTransport(url, client_id, clean_session, manual_ack)
    try:
        transport.connect()
    except TransportError as exc:
        if not fallback:
            raise
        if on_fallback is not None:
            on_fallback(f"{exc}; using the in-process transport (messages stay in this process)")
        transport = InProcessTransport(default_inprocess_broker(), client_id, clean_session)
        transport.connect()
    return transport

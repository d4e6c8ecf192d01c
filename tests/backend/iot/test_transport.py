from __future__ import annotations

import threading
import time

import pytest

from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.iot.errors import TransportError
from backend.iot.transport import (
    InProcessBroker,
    InProcessTransport,
    Message,
    MqttTransport,
    open_transport,
)
from backend.net import free_port

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")


def _wait(pred: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def broker() -> object:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    with MosquittoBroker() as b:
        yield b


@needs_mosquitto
def test_mqtt_burst_of_2000_arrives_complete(broker: MosquittoBroker) -> None:
    got: list[Message] = []
    lock = threading.Lock()

    def handler(m: Message) -> None:
        with lock:
            got.append(m)

    sub = MqttTransport(broker.url, "t-burst", clean_session=False)
    sub.connect()
    sub.subscribe("tegrid/meters/+/readings", handler)
    time.sleep(0.2)
    pub = MqttTransport(broker.url)
    pub.connect()
    for i in range(2000):
        pub.publish(f"tegrid/meters/0x{i:040x}/readings", b"%d" % i)
    assert pub.flush(20)
    assert _wait(lambda: len(got) == 2000)
    assert sorted(int(m.payload) for m in got) == list(range(2000))
    pub.close()
    sub.close()


@needs_mosquitto
def test_mqtt_unacked_messages_are_redelivered_to_persistent_session(
    broker: MosquittoBroker,
) -> None:
    first: list[Message] = []
    sub = MqttTransport(broker.url, "t-redeliver", clean_session=False, manual_ack=True)
    sub.connect()
    sub.subscribe("tegrid/x/#", first.append)
    time.sleep(0.2)
    pub = MqttTransport(broker.url)
    pub.connect()
    for i in range(5):
        pub.publish(f"tegrid/x/{i}", b"m")
    assert pub.flush(10)
    assert _wait(lambda: len(first) == 5)
    first[0].ack()  # only one acked, then the subscriber "crashes"
    time.sleep(0.2)
    sub.close()
    pub.publish("tegrid/x/late", b"while away")
    assert pub.flush(10)

    again: list[Message] = []
    sub2 = MqttTransport(broker.url, "t-redeliver", clean_session=False, manual_ack=True)
    sub2.subscribe("tegrid/x/#", again.append)
    sub2.connect()
    assert _wait(lambda: len(again) >= 5)
    time.sleep(0.3)
    topics = sorted(m.topic for m in again)
    assert topics == ["tegrid/x/1", "tegrid/x/2", "tegrid/x/3", "tegrid/x/4", "tegrid/x/late"]
    for m in again:
        m.ack()
    sub2.close()
    pub.close()


def test_mqtt_unreachable_broker_raises_transport_error() -> None:
    with pytest.raises(TransportError):
        MqttTransport(f"mqtt://127.0.0.1:{free_port()}", connect_timeout_s=1).connect()
    with pytest.raises(TransportError):
        MqttTransport("http://x")


def test_open_transport_falls_back_to_in_process() -> None:
    notes: list[str] = []
    transport = open_transport(
        f"mqtt://127.0.0.1:{free_port()}", fallback=True, on_fallback=notes.append
    )
    assert transport.kind == "in-process"
    assert "in-process" in notes[0]
    transport.close()


def test_in_process_transport_wildcards_and_persistent_session() -> None:
    broker = InProcessBroker()
    got: list[str] = []
    sub = InProcessTransport(broker, "oracle", clean_session=False)
    sub.connect()
    sub.subscribe("tegrid/meters/+/readings", lambda m: got.append(m.topic))
    pub = InProcessTransport(broker)
    pub.connect()
    pub.publish("tegrid/meters/a/readings", b"1")
    pub.publish("tegrid/meters/a/announce", b"2")
    assert _wait(lambda: got == ["tegrid/meters/a/readings"])
    sub.close()
    pub.publish("tegrid/meters/b/readings", b"3")  # kept for the persistent session
    sub2 = InProcessTransport(broker, "oracle", clean_session=False)
    sub2.connect()
    sub2.subscribe("tegrid/meters/+/readings", lambda m: got.append(m.topic))
    assert _wait(lambda: got[-1:] == ["tegrid/meters/b/readings"])
    sub2.close()

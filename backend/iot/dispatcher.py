"""The dispatcher (``tegrid dispatcher``): activations in, signed control actions out over MQTT,
devices' acks into the durable :class:`~backend.iot.control_store.ControlStore`.

Each step: take the activations to dispatch from the :class:`ActivationSource` port (intervals up
to the current one + ``ahead``) and the grid mode switches from the ``ModeSource``
(``backend.iot.modes``: one ``ModeAction`` per grid-forming device) into the store (idempotent),
expire unanswered actions whose expiry has passed (chain time), sign every pending action with the
grid operator key and store the signatures (one transaction) *before* publishing them, and publish
again - the stored signed action, byte for byte - every action unanswered for ``retry_s``. Acks
arrive on ``tegrid/devices/+/ack`` through a persistent MQTT session (fixed client id, manual ack):
each is checked (wire format, the device's own signature, the device the action went to), written
in a group commit, and only then acknowledged to the broker, so an ack received just before a kill
-9 is delivered again. A restart therefore loses nothing and never signs a second, different action
for an activation: a ``sent`` row is republished from its stored signature.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from backend.chain.eip712 import Domain, address_of
from backend.errors import TegridError
from backend.iot.control import (
    ACK_WILDCARD,
    SOC_WILDCARD,
    ControlAction,
    ModeAction,
    SignedAck,
    SignedAction,
    StateOfCharge,
    control_topic,
    parse_ack,
    parse_soc,
)
from backend.iot.control_store import ControlStore, ControlTarget
from backend.iot.errors import MessageError
from backend.iot.modes import ModeSource
from backend.iot.transport import Message, Transport

log = logging.getLogger(__name__)

ACK_LINGER_S = 0.01  # how long the ack writer waits for more acks to commit with the first one


class ActivationSource(Protocol):
    """Where the dispatcher learns which activations to dispatch (the market's activation
    records, once they exist; the store itself meanwhile)."""

    def pending_activations(self, interval_id: int) -> list[ControlTarget]:
        """The activations of intervals up to ``interval_id`` not yet handed to the dispatcher
        (handing one over twice is harmless: the store keeps the first)."""
        ...


class StoreActivations:
    """The store-backed source: activations written to ``control_actions`` as ``pending`` (by
    ``ControlStore.add``: the market, a test, a bench) are the ones to dispatch."""

    def __init__(self, store: ControlStore) -> None:
        self.store = store

    def pending_activations(self, interval_id: int) -> list[ControlTarget]:
        return self.store.pending_targets(interval_id)


@dataclass
class StepReport:
    added: int = 0
    sent: int = 0
    resent: int = 0
    expired: int = 0


class Dispatcher:
    """Signs with ``grid_operator_key`` in ``domain`` (the registry's), publishes on
    ``transport``; ``clock()`` is chain time in seconds."""

    def __init__(
        self,
        store: ControlStore,
        source: ActivationSource,
        transport: Transport,
        domain: Domain,
        grid_operator_key: str,
        interval_seconds: int,
        clock: Callable[[], int],
        retry_s: float = 5.0,
        ahead: int = 2,
        say: Callable[[str], None] = lambda _line: None,
        chunk: int = 100,
        modes: ModeSource | None = None,
        soc_check: Callable[[StateOfCharge], str | None] | None = None,
    ) -> None:
        self.chunk = chunk
        self.modes = modes
        # what the registry says of a report's device (None: keep it; else why not)
        self.soc_check = soc_check
        self.store = store
        self.source = source
        self.transport = transport
        self.domain = domain
        self.key = grid_operator_key
        self.signer = address_of(grid_operator_key)
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.retry_s = retry_s
        self.ahead = ahead
        self.say = say
        self.acks_recorded = 0
        self.acks_dropped = 0
        self.socs_recorded = 0
        self.socs_dropped = 0
        self._acks: queue.Queue[tuple[SignedAck, Message]] = queue.Queue()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    # ------------------------------------------------------------------ actions
    def sign(self, action: ControlAction | ModeAction) -> SignedAction:
        return action.sign(self.key, self.domain)

    def step(self) -> StepReport:
        report = StepReport()
        chain_now = int(self.clock())
        upto = chain_now // self.interval_seconds + self.ahead
        report.added = self.store.add(self.source.pending_activations(upto))
        if self.modes is not None:
            report.added += self.store.add(self.modes.pending_modes(chain_now))
        report.expired = self.store.expire(chain_now)
        now = time.time()
        while True:  # in chunks: the first actions are on the wire while the next are signed
            chunk = self.store.sign_pending(self.sign, self.signer, time.time(), self.chunk)
            for signed in chunk:
                self._publish(signed)
            report.sent += len(chunk)
            if len(chunk) < self.chunk:
                break
        for signed in self.store.due_resends(now, self.retry_s, chain_now):
            self._publish(signed)
            report.resent += 1
        return report

    def _publish(self, signed: SignedAction) -> None:
        stamped = SignedAction(signed.action, signed.signature, time.time())
        self.transport.publish(control_topic(signed.action.device), stamped.to_json(), qos=1)

    # ------------------------------------------------------------------ acks
    def start(self) -> None:
        """Subscribe to the acks and start the writer that commits them in groups."""
        self._stop.clear()
        self._writer = threading.Thread(target=self._write_acks, name="ack-writer", daemon=True)
        self._writer.start()
        self.transport.subscribe(ACK_WILDCARD, self.on_ack, qos=1)
        self.transport.subscribe(SOC_WILDCARD, self.on_soc, qos=1)

    def stop(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=10)

    def on_ack(self, message: Message) -> None:
        try:
            signed = parse_ack(message.payload, message.topic)
            signer = signed.signer(self.domain)
            if signer != signed.ack.device:
                raise MessageError("bad_signature", f"signed by {signer}, not the device")
        except MessageError as exc:
            self.acks_dropped += 1
            self.say(f"warning: ack on {message.topic} dropped: {exc}")
            message.ack()
            return
        self._acks.put((signed, message))

    def on_soc(self, message: Message) -> None:
        """A battery's signed state of charge: checked (wire format, the device's own signature,
        ``soc_check``: an active battery in the registry, within its capacity) and kept as its
        latest (by the device's ``at``), then acknowledged to the broker. With the registry out
        of reach it is left unacknowledged (the next report supersedes it anyway)."""
        try:
            signed = parse_soc(message.payload, message.topic)
            signer = signed.signer(self.domain)
            if signer != signed.report.device:
                raise MessageError("bad_signature", f"signed by {signer}, not the device")
            refusal = self.soc_check(signed.report) if self.soc_check is not None else None
            if refusal is not None:
                raise MessageError("not_a_battery", refusal)
        except MessageError as exc:
            self.socs_dropped += 1
            self.say(f"warning: state of charge on {message.topic} dropped: {exc}")
            message.ack()
            return
        except (TegridError, OSError) as exc:
            log.warning("cannot check a state of charge against the registry: %s", exc)
            return
        try:
            self.store.record_socs([signed])
        except Exception as exc:  # the store is down: not acked, the broker delivers it again
            log.warning("cannot record a state of charge: %s", exc)
            return
        self.socs_recorded += 1
        message.ack()

    def _write_acks(self) -> None:
        while not self._stop.is_set() or not self._acks.empty():
            try:
                first = self._acks.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            # group commit with a short linger: acks of a burst arrive ~1 ms apart, and a commit
            # per handful of them cost more CPU than verifying them (profiled: 172 commits of ~6
            # acks for 1,000 actions); waiting up to ACK_LINGER_S for more makes them a few
            linger_until = time.monotonic() + ACK_LINGER_S
            while len(batch) < 1000:
                try:
                    batch.append(self._acks.get_nowait())
                except queue.Empty:
                    left = linger_until - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        batch.append(self._acks.get(timeout=left))
                    except queue.Empty:
                        break
            try:
                states = self.store.record_acks([signed for signed, _m in batch])
            except Exception as exc:  # the store is down: not acked, the broker delivers again
                log.warning("cannot record %d acks: %s", len(batch), exc)
                for item in batch:
                    self._acks.put(item)
                self._stop.wait(1.0)
                continue
            for (signed, message), state in zip(batch, states, strict=True):
                message.ack()  # persisted first: the broker forgets it only now
                if state == "unknown":
                    self.acks_dropped += 1
                    self.say(
                        f"warning: ack for unknown activation 0x{signed.ack.activation_id.hex()} "
                        f"from {signed.ack.device} dropped"
                    )
                elif state != "duplicate":
                    self.acks_recorded += 1
                    if state == "refused":
                        self.say(
                            f"device {signed.ack.device} refused activation "
                            f"0x{signed.ack.activation_id.hex()}: {signed.ack.reason}"
                        )

    def pending_acks(self) -> int:
        return self._acks.qsize()

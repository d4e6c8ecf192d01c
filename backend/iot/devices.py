"""Simulated controllable devices (``tegrid devices simulate``): each has its own key and registry
record, takes signed control actions from ``tegrid/devices/<device>/control``, checks them,
applies the valid ones to its simulated power, answers with a signed ack and meters what it did.

A device checks an action, in this order, and refuses (never applies) at the first failure:
its registry record is active (``device_inactive``); the action names this device
(``wrong_device``); the signature recovers to a key holding ``GRID_OPERATOR_ROLE`` in the
registry, asked once per signer and cached (``unauthorized``); its activation id is new
(``replayed``; the *identical* action delivered again - MQTT QoS 1 is at-least-once, and the
dispatcher resends until it hears an ack - is answered with the ack already sent, applying
nothing again); ``expiry`` is after the device's clock (``expired``); the interval has not ended
(``interval_over``); ``setpointW`` lies in the record's ``[minW, maxW]`` (``out_of_limits``);
a battery's state of charge can give or take the interval's energy at that setpoint
(``state_of_charge``). An applied setpoint is the device's power for the whole interval (a later
action for the same interval replaces it); a battery's state of charge moves by the difference.

Mode actions (``ModeAction``, after the registry's ``GridModeChanged``) are checked the same way
up to the expiry - active, addressed to it, signed by a grid operator, not replayed (another action
under an applied id, or a switch older than the one applied: ``replayed``), not expired - then the
device must be grid-forming (battery or genset, ``not_grid_forming``) and the mode 0 or 1
(``unknown_mode``). Applied, the unit forms the grid from the action's effective interval: a genset
starts (runs at its minimum stable load ``minW`` unless a setpoint says more), a battery follows
the island's residual load (``forming_w``, when the fleet is given one) within its limits and state
of charge; mode 0 returns both to their setpoints and baseline. The ack's ``appliedW`` is the
unit's power in the effective interval.

Readings: the device's own interval reading (import/export Wh of its own power, the meters'
``Reading`` signed by the device key in the ``MeterReadings`` domain) goes to
``tegrid/meters/<device>/readings``, where the oracle takes meter readings; a device that ignored
its action meters its baseline.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from eth_utils import keccak

from backend.chain import eip712
from backend.chain.address import checksum
from backend.chain.eip712 import Domain, address_of
from backend.chain.errors import SignatureError
from backend.chain.protocol import DEVICE_GENSET, DEVICE_KINDS, GRID_FORMING_KINDS
from backend.chain.registry import DeviceRecord
from backend.errors import TegridError
from backend.iot.control import (
    GRID_MODES,
    MODE_ISLANDED,
    AckStatus,
    ControlAck,
    ControlAction,
    ModeAction,
    SignedAck,
    SignedAction,
    StateOfCharge,
    ack_topic,
    control_topic,
    parse_action,
    soc_topic,
    topic_device,
)
from backend.iot.errors import IotError, MessageError
from backend.iot.schema import SignedReading, readings_topic
from backend.iot.signing import Reading, ReadingDomain, sign_reading
from backend.iot.transport import Message, Transport

log = logging.getLogger(__name__)

BATTERY = 1
DEV_DEVICE_SEED = "tegrid dev device"


def dev_device_key(index: int) -> str:
    """Deterministic private key of development device ``index`` (public test keys)."""
    return "0x" + keccak(text=f"{DEV_DEVICE_SEED} {index}").hex()


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: its key, what it runs at without actions (``baseline_w``), a
    battery's starting state of charge, and whether it ignores every action (``ignore``: no
    ack, nothing applied - a broken or unwilling device). Kind, bus and limits are the
    registry's (``record``); the ones here are what ``--register`` registers."""

    key: str
    kind: int = BATTERY
    min_w: int = -5_000
    max_w: int = 5_000
    capacity_wh: int = 10_000
    soc_wh: int = 5_000
    baseline_w: int = 0
    ignore: bool = False
    address: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "address", address_of(self.key))
        except (ValueError, TypeError) as exc:
            raise IotError(f"bad device key: {exc}") from None
        if self.kind not in DEVICE_KINDS:
            raise IotError(f"device kind must be one of {sorted(DEVICE_KINDS)}, got {self.kind}")
        if self.kind == BATTERY and not 0 <= self.soc_wh <= self.capacity_wh:
            raise IotError(f"state of charge {self.soc_wh} Wh outside [0, {self.capacity_wh}]")


def dev_devices(count: int, ignore: int = 0) -> list[DeviceSpec]:
    """``count`` development batteries (5 kW, 10 kWh, half charged); the last ``ignore`` of them
    ignore every action."""
    return [DeviceSpec(dev_device_key(i), ignore=i >= count - ignore) for i in range(count)]


def interval_energy_wh(power_w: int, interval_seconds: int) -> int:
    """Energy of ``power_w`` held for an interval, in Wh (floor of the magnitude, sign kept)."""
    magnitude = abs(power_w) * interval_seconds // 3600
    return magnitude if power_w >= 0 else -magnitude


class SimulatedDevice:
    """The state of one device: its record, setpoints per interval, battery state of charge,
    the activations it applied (with the ack it sent for each)."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.address = spec.address
        self.record: DeviceRecord | None = None
        self.soc_wh = spec.soc_wh
        self.setpoints: dict[int, int] = {}
        self.applied: dict[bytes, tuple[bytes, SignedAck]] = {}
        self.mode = 0  # 1: forming the island from mode_from on
        self.mode_from = 0
        self.forming: dict[int, int] = {}  # islanded: the battery's power per interval

    def islanded(self, interval_id: int) -> bool:
        return self.mode == MODE_ISLANDED and interval_id >= self.mode_from

    def power_w(self, interval_id: int) -> int:
        setpoint = self.setpoints.get(interval_id)
        if setpoint is None and self.islanded(interval_id):
            kind = self.record.kind if self.record is not None else self.spec.kind
            if kind == DEVICE_GENSET:
                return self.record.min_w if self.record is not None else self.spec.min_w
            setpoint = self.forming.get(interval_id)
        return self.spec.baseline_w if setpoint is None else setpoint

    def reading(self, interval_id: int, interval_seconds: int) -> Reading:
        """What the device metered over the interval: its power there, as import or export."""
        energy_wh = interval_energy_wh(self.power_w(interval_id), interval_seconds)
        return Reading(self.address, interval_id, max(-energy_wh, 0), max(energy_wh, 0))


class DeviceFleet:
    """Simulated devices sharing one transport. ``is_grid_operator(address)`` asks the registry
    (the fleet caches each answer); ``records(addresses)`` reads the devices' registry records;
    ``clock()`` is the devices' time (chain time, seconds). ``say`` gets one line per refusal
    and registry finding."""

    def __init__(
        self,
        specs: Iterable[DeviceSpec],
        domain: Domain,
        reading_domain: ReadingDomain,
        transport: Transport,
        interval_seconds: int,
        is_grid_operator: Callable[[str], bool],
        records: Callable[[Sequence[str]], Mapping[str, DeviceRecord]],
        clock: Callable[[], float],
        say: Callable[[str], None] = lambda _line: None,
        forming_w: Callable[[str, int], int | None] | None = None,
    ) -> None:
        self.forming_w = forming_w  # (battery, interval) -> the island's residual load, W
        self.devices = {spec.address: SimulatedDevice(spec) for spec in specs}
        # topic -> device without hashing a checksum per message; the addresses' checksums
        # cached as the messages spell them (EIP-55 costs a keccak on a cache miss)
        self._by_topic = {control_topic(a): d for a, d in self.devices.items()}
        for address in self.devices:
            checksum(address)
        self.domain = domain
        self.reading_separator = reading_domain.separator()
        self.transport = transport
        self.interval_seconds = interval_seconds
        self._is_grid_operator = is_grid_operator
        self._records = records
        self.clock = clock
        self.say = say
        self._operators: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # applied, duplicate, malformed, ignored, <reason>

    # ------------------------------------------------------------------ registry
    def sync_registry(self) -> int:
        """Read every device's record; report the ones the registry does not list as active.
        Returns how many are active."""
        records = self._records(list(self.devices))
        active = 0
        for address, device in self.devices.items():
            record = records.get(address)
            if record is not None and record.owner is not None and record.active:
                active += 1
            elif device.record != record:
                self.say(f"warning: device {address} is not an active device in the registry: "
                         "it refuses every action")  # fmt: skip
            with self._lock:
                device.record = record
        return active

    def grid_operator(self, signer: str) -> bool:
        known = self._operators.get(signer)
        if known is None:
            known = self._operators[signer] = bool(self._is_grid_operator(signer))
        return known

    # ------------------------------------------------------------------ actions
    def start(self) -> None:
        """Subscribe every device to its control topic (QoS 1)."""
        for address in self.devices:
            self.transport.subscribe(control_topic(address), self.handle, qos=1)

    def handle(self, message: Message) -> None:
        """One control message: check, apply or refuse, answer with a signed ack."""
        try:
            device = self._by_topic.get(message.topic)
            if device is None:
                topic_device(message.topic)  # a malformed topic says so
                raise MessageError("topic", f"no simulated device on {message.topic}")
            signed = parse_action(message.payload)
        except MessageError as exc:
            with self._lock:
                self.counts["malformed"] += 1
            self.say(f"warning: control message on {message.topic} dropped: {exc}")
            message.ack()
            return
        if device.spec.ignore:
            with self._lock:
                self.counts["ignored"] += 1
            message.ack()
            return
        try:
            ack = self.decide(device, signed)
        except TegridError as exc:
            # the registry did not answer about a new signer: no answer now; the dispatcher
            # publishes unacknowledged actions again
            self.say(f"warning: {exc}; the action waits for the dispatcher's resend")
            return
        self.transport.publish(ack_topic(device.address), ack.to_json(), qos=1)
        message.ack()

    def decide(self, device: SimulatedDevice, signed: SignedAction) -> SignedAck:
        """Check ``signed`` for ``device``, apply it when valid; the signed ack to send."""
        if isinstance(signed.action, ModeAction):
            return self._decide_mode(device, signed, signed.action)
        action = signed.action
        assert isinstance(action, ControlAction)
        digest = action.digest(self.domain)
        with self._lock:
            status = self._check(device, signed, digest)
            if status is None:  # the identical action again: the same answer, nothing applied
                self.counts["duplicate"] += 1
                return device.applied[action.activation_id][1]
            interval_id = action.interval_id
            if status == AckStatus.APPLIED:
                before = device.power_w(interval_id)
                device.setpoints[interval_id] = action.setpoint_w
                if device.record is not None and device.record.kind == BATTERY:
                    device.soc_wh -= interval_energy_wh(
                        action.setpoint_w, self.interval_seconds
                    ) - interval_energy_wh(before, self.interval_seconds)
            ack = ControlAck(
                action.activation_id, device.address, int(status), device.power_w(interval_id),
                int(self.clock()),
            ).sign(device.spec.key, self.domain)  # fmt: skip
            if status == AckStatus.APPLIED:
                device.applied[action.activation_id] = (digest, ack)
            self.counts[status.label] += 1
        if status != AckStatus.APPLIED:
            self.say(
                f"device {device.address} refused activation 0x{action.activation_id.hex()} "
                f"(interval {interval_id}, setpoint {action.setpoint_w} W): {status.label}"
            )
        return ack

    def _decide_mode(
        self, device: SimulatedDevice, signed: SignedAction, action: ModeAction
    ) -> SignedAck:
        digest = action.digest(self.domain)
        with self._lock:
            status = self._check_mode(device, signed, action, digest)
            if status is None:
                self.counts["duplicate"] += 1
                return device.applied[action.action_id][1]
            if status == AckStatus.APPLIED:
                device.mode, device.mode_from = action.mode, action.effective_interval
            ack = ControlAck(
                action.action_id, device.address, int(status),
                device.power_w(action.effective_interval), int(self.clock()),
            ).sign(device.spec.key, self.domain)  # fmt: skip
            if status == AckStatus.APPLIED:
                device.applied[action.action_id] = (digest, ack)
            self.counts[f"mode_{status.label}"] += 1
        mode = GRID_MODES.get(action.mode, f"mode {action.mode}")
        if status != AckStatus.APPLIED:
            self.say(f"device {device.address} refused the switch to {mode} "
                     f"(0x{action.action_id.hex()}): {status.label}")  # fmt: skip
        else:
            self.say(f"device {device.address} switched to {mode} from interval "
                     f"{action.effective_interval}")  # fmt: skip
        return ack

    def _check_mode(
        self, device: SimulatedDevice, signed: SignedAction, action: ModeAction, digest: bytes
    ) -> AckStatus | None:
        status = self._check_common(device, signed, digest, action.action_id, action.device)
        if status is not None:
            return status
        if action.action_id in device.applied:
            return None  # the identical action again
        if action.expiry <= self.clock():
            return AckStatus.EXPIRED
        if device.mode_from and action.effective_interval < device.mode_from:
            return AckStatus.REPLAYED  # an older switch than the one applied
        assert device.record is not None
        if device.record.kind not in GRID_FORMING_KINDS:
            return AckStatus.NOT_GRID_FORMING
        if action.mode not in GRID_MODES:
            return AckStatus.UNKNOWN_MODE
        return AckStatus.APPLIED

    def _check_common(
        self, device: SimulatedDevice, signed: SignedAction, digest: bytes, key: bytes, to: str
    ) -> AckStatus | None:
        """The checks every action shares: active, addressed here, a grid operator's signature,
        its id not applied under another action (``replayed``). None: go on."""
        record = device.record
        if record is None or record.owner is None or not record.active:
            return AckStatus.DEVICE_INACTIVE
        if to != device.address:
            return AckStatus.WRONG_DEVICE
        try:
            signer = eip712.recover(digest, signed.signature)
        except SignatureError:
            return AckStatus.UNAUTHORIZED
        if not self.grid_operator(signer):
            return AckStatus.UNAUTHORIZED
        seen = device.applied.get(key)
        if seen is not None and seen[0] != digest:
            return AckStatus.REPLAYED
        return None

    def _check(
        self, device: SimulatedDevice, signed: SignedAction, digest: bytes
    ) -> AckStatus | None:
        action = signed.action
        assert isinstance(action, ControlAction)
        status = self._check_common(device, signed, digest, action.activation_id, action.device)
        if status is not None:
            return status
        if action.activation_id in device.applied:
            return None  # the identical action again
        record = device.record
        assert record is not None
        now = self.clock()
        if action.expiry <= now:
            return AckStatus.EXPIRED
        if (action.interval_id + 1) * self.interval_seconds <= now:
            return AckStatus.INTERVAL_OVER
        if not record.min_w <= action.setpoint_w <= record.max_w:
            return AckStatus.OUT_OF_LIMITS
        if record.kind == BATTERY:
            energy = interval_energy_wh(action.setpoint_w, self.interval_seconds)
            held = interval_energy_wh(device.power_w(action.interval_id), self.interval_seconds)
            if not 0 <= device.soc_wh - (energy - held) <= record.capacity_wh:
                return AckStatus.STATE_OF_CHARGE
        return AckStatus.APPLIED

    # ------------------------------------------------------------------ readings
    def form(self, interval_id: int) -> None:
        """The islanded batteries' power of ``interval_id``: the island's residual load
        (``forming_w``) within the record's limits and what the state of charge can give or take
        over the interval; the state of charge moves by it."""
        if self.forming_w is None:
            return
        with self._lock:
            batteries = [
                d for d in self.devices.values()
                if d.record is not None and d.record.kind == BATTERY and d.islanded(interval_id)
                and interval_id not in d.setpoints and interval_id not in d.forming
            ]  # fmt: skip
        for d in batteries:
            want = self.forming_w(d.address, interval_id)
            if want is None:
                continue
            assert d.record is not None
            h = self.interval_seconds / 3600
            high = min(d.record.max_w, int(d.soc_wh / h))
            low = max(d.record.min_w, -int((d.record.capacity_wh - d.soc_wh) / h))
            with self._lock:
                d.forming[interval_id] = power = min(max(int(want), low), high)
                d.soc_wh -= interval_energy_wh(power, self.interval_seconds) - interval_energy_wh(
                    d.spec.baseline_w, self.interval_seconds
                )

    def publish_readings(self, interval_id: int, sent_at: float | None = None) -> int:
        """Each device's signed reading of ``interval_id`` (ended) on its meter readings topic,
        and each battery's state of charge after it, signed, on its ``soc`` topic."""
        self.form(interval_id)
        at = int(self.clock())
        with self._lock:
            readings = [
                (d.spec.key, d.reading(interval_id, self.interval_seconds))
                for d in self.devices.values()
            ]
            socs = [
                (d.spec.key, StateOfCharge(d.address, max(d.soc_wh, 0), at))
                for d in self.devices.values()
                if d.record is not None and d.record.kind == BATTERY
            ]
        for key, reading in readings:
            signed = SignedReading(
                reading, sign_reading(key, self.reading_separator, reading), sent_at
            )
            self.transport.publish(readings_topic(reading.meter), signed.to_json(), qos=1)
        for key, report in socs:
            self.transport.publish(
                soc_topic(report.device), report.sign(key, self.domain).to_json(), qos=1
            )
        return len(readings)

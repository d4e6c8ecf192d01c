"""Chain-head watcher: notices the chain going backwards and says from which block on.

A rollback is either the head number going below the highest one seen, or the hash of a
remembered block changing (a reorg, or Anvil restarted from an older state file and mined new
blocks since). :meth:`HeadWatcher.check` compares the chain with the heads it remembered and
returns a :class:`Rollback` whose ``fork_block`` is the first block that may differ from what was
seen: everything a component did at or above it must be checked against the chain again (the
oracle re-checks its readings, the keeper rescans its events; the market recorder can subscribe
with :meth:`HeadWatcher.subscribe`).

With ``state_file`` the last head and the rollbacks noticed are kept in a small JSON file, so a
restarted process - or ``tegrid doctor`` - notices a rollback that happened while it was not
looking. The file is tied to the chain's genesis hash; another chain's file is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tegrid.chain")

KEEP_HEADS = 256  # heads remembered to find where a rollback forked
KEEP_ROLLBACKS = 20


@dataclass(frozen=True)
class Rollback:
    """The chain went back: its highest block seen was ``old_head``, it is now at ``new_head``, and
    blocks from ``fork_block`` on may differ from what was seen (0 when no remembered block is left
    to anchor it: re-check everything)."""

    old_head: int
    new_head: int
    fork_block: int
    detected_at: float

    @property
    def blocks_lost(self) -> int:
        """Blocks seen before that are no longer (or no longer the same) on the chain."""
        return max(0, self.old_head - self.fork_block + 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "blocks_lost": self.blocks_lost}

    def describe(self) -> str:
        return (
            f"chain head went back from block {self.old_head} to {self.new_head} "
            f"(blocks from {self.fork_block} on changed, {self.blocks_lost} lost) at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.detected_at))}"
        )


class HeadWatcher:
    """Call :meth:`check` now and then (each costs one or two JSON-RPC calls; ``min_interval_s``
    makes calls more often than that free). Thread-safe."""

    def __init__(
        self,
        w3: Any,
        *,
        state_file: Path | None = None,
        min_interval_s: float = 0.0,
        keep: int = KEEP_HEADS,
    ) -> None:
        self.w3 = w3
        self.state_file = state_file
        self.min_interval_s = min_interval_s
        self.keep = keep
        self.rollbacks: list[Rollback] = []
        self._seen: dict[int, bytes] = {}  # block number -> hash, of heads seen
        self._genesis: bytes | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Rollback], None]] = []
        self._loaded = False

    @property
    def head(self) -> int | None:
        """Highest block number seen (None before the first check)."""
        return max(self._seen) if self._seen else None

    def subscribe(self, listener: Callable[[Rollback], None]) -> None:
        """Call ``listener(rollback)`` (in the checking thread) for every rollback noticed."""
        self._listeners.append(listener)

    def check(self, force: bool = False) -> Rollback | None:
        """Read the chain head; a :class:`Rollback` when the chain went back since the last look.
        Connection errors propagate (the caller knows whether the chain may be down)."""
        with self._lock:
            now = time.monotonic()
            if not force and self._seen and now - self._checked_at < self.min_interval_s:
                return None
            self._checked_at = now
            if not self._loaded:
                self._loaded = True
                self._load()
            rollback = self._check()
        if rollback is not None:
            log.warning("%s", rollback.describe())
            for listener in list(self._listeners):
                try:
                    listener(rollback)
                except Exception:
                    log.exception("rollback listener failed")
        return rollback

    def observe(self, number: int, block_hash: bytes) -> None:
        """Remember a block one's own work is in (a receipt's ``blockNumber``/``blockHash``), so a
        rollback below it is noticed even if no check ever saw it as the head."""
        with self._lock:
            if self._seen.get(number) != bytes(block_hash):
                self._seen[number] = bytes(block_hash)

    def report(self) -> dict[str, Any]:
        """What ``/health`` and ``tegrid doctor`` show."""
        last = self.rollbacks[-1] if self.rollbacks else None
        return {
            "head": self.head,
            "rollbacks": len(self.rollbacks),
            "last_rollback": last.as_dict() if last else None,
        }

    # ---------------------------------------------------------------- internals

    def _hash_at(self, number: int) -> bytes | None:
        block = self.w3.eth.get_block(number)
        return bytes(block["hash"]) if block is not None else None

    def _check(self) -> Rollback | None:
        latest = self.w3.eth.get_block("latest")
        number, block_hash = int(latest["number"]), bytes(latest["hash"])
        if self._genesis is None:
            self._genesis = self._hash_at(0)
        if not self._seen:
            self._remember(number, block_hash)
            return None
        top = max(self._seen)
        if number == top and self._seen[top] == block_hash:
            return None
        if number == top + 1 and bytes(latest["parentHash"]) == self._seen[top]:
            self._remember(number, block_hash)
            return None
        # Find the highest remembered block still on the chain.
        ancestor: int | None = None
        changed = number < top
        for seen_number in sorted((n for n in self._seen if n <= number), reverse=True):
            if (block_hash if seen_number == number else self._hash_at(seen_number)) == self._seen[
                seen_number
            ]:
                ancestor = seen_number
                break
            changed = True
        if not changed:
            self._remember(number, block_hash)
            return None
        rollback = Rollback(
            old_head=top,
            new_head=number,
            fork_block=0 if ancestor is None else ancestor + 1,
            detected_at=time.time(),
        )
        self._seen = {n: h for n, h in self._seen.items() if n < rollback.fork_block}
        self.rollbacks = [*self.rollbacks, rollback][-KEEP_ROLLBACKS:]
        self._remember(number, block_hash)
        return rollback

    def _remember(self, number: int, block_hash: bytes) -> None:
        self._seen[number] = block_hash
        if len(self._seen) > self.keep:
            for old in sorted(self._seen)[: len(self._seen) - self.keep]:
                del self._seen[old]
        self._save()

    def _load(self) -> None:
        if self.state_file is None:
            return
        try:
            state = json.loads(self.state_file.read_text())
            genesis = bytes.fromhex(state["genesis"])
            if self._genesis is None:
                self._genesis = self._hash_at(0)
            if genesis != self._genesis:
                return  # another chain's file (a fresh Anvil): start afresh
            self._seen = {int(n): bytes.fromhex(h) for n, h in state.get("heads", {}).items()}
            self.rollbacks = [Rollback(**r) for r in state.get("rollbacks", [])]
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable chain-head file %s: %s", self.state_file, exc)

    def _file_rollbacks(self) -> list[Rollback]:
        assert self.state_file is not None and self._genesis is not None
        try:
            state = json.loads(self.state_file.read_text())
            if bytes.fromhex(state["genesis"]) != self._genesis:
                return []
            return [Rollback(**r) for r in state.get("rollbacks", [])]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _save(self) -> None:
        if self.state_file is None or self._genesis is None:
            return
        recent = sorted(self._seen)[-16:]  # enough to anchor a rollback seen after a restart
        # Several processes share the file: keep the rollbacks the others noticed too.
        rollbacks = {(r.old_head, r.new_head, r.fork_block): r for r in self._file_rollbacks()}
        rollbacks.update({(r.old_head, r.new_head, r.fork_block): r for r in self.rollbacks})
        state = {
            "genesis": self._genesis.hex(),
            "heads": {str(n): self._seen[n].hex() for n in recent},
            "rollbacks": [
                asdict(r)
                for r in sorted(rollbacks.values(), key=lambda r: r.detected_at)[-KEEP_ROLLBACKS:]
            ],
        }
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".chain-head-")
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc)

"""The operator's side of `state_restore` (agent.state_restore): a learnt-state archive cut into
signed parts, and a sender that follows the gateway's answers until the new card has it.

`RestoreArchive` checks the archive as the gateway will (its manifest, every file, the site and
gateway of the target unless `force`) and signs part `i` on demand (each with a fresh id, nonce
and expiry). `sign-state-restore` prints them for a publisher of one's own; `send-state-restore`
(`RestoreSender`) publishes them itself over a broker connection of the operator's, because a
burst of parts is not what a gateway takes best: its command inbox holds 16 commands and drops
the rest unanswered, and it takes `[security] max_commands_per_minute` (30) from one key. The
sender sends one part at a time and waits for its `command_result` (on the gateway's JSON
`events` topic, compressed or not): over a slow link, parts queued behind one another also hold
back the gateway's acknowledgements of its own data and its answers (measured: at 24 kB/s towards
the gateway, 4 parts of 64 KiB in flight left answers 6 s apart and more), and on a LAN waiting
costs little. It keeps to the key's rate, sends again a part not answered in time or refused
`rate_limited`, stops at the first other refusal of one of its parts with its reason (a refusal
before the signature was checked carries no id: it is known by the digest of the payload it
answers, `sha_of`), and once the archive is staged waits for the gateway's `state_restored` (or
`state_restore_failed`) after its restart. A gateway on Sparkplug B answers in its NDATA
(`Events/Event`): give its group and node.
"""

from __future__ import annotations

import base64
import hashlib
import queue
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from water_edge.agent.operator_link import Answer, Broker, ConsoleError, OperatorLink, answer_of, sha_of
from water_edge.agent.remote.chunks import MIN_CHUNK_BYTES
from water_edge.agent.state_transfer import Imported, StateTransferError, inspect_archive
from water_edge.core import envelope

PART_BYTES: Final = 192 * 1024  # of archive a part: ~260 KiB signed, within max_command_bytes (512 KiB)
RESTORE_TTL_S: Final = 3600
# Parts awaiting their answer: one (the module docstring says why several hold a slow link back).
IN_FLIGHT: Final = 1
RATE_HOLD_S: Final = 10.0  # pause after a part refused `rate_limited`
COMMAND: Final = "state_restore"


class RestoreSendError(ConsoleError):
    """Why a restore was not taken, in words for the operator."""


class RestoreArchive:
    """An archive for `target` ("site/gateway"), checked, in parts of `part_bytes`."""

    def __init__(
        self,
        archive: Path,
        target: str,
        *,
        part_bytes: int = PART_BYTES,
        force: bool = False,
        content: bytes | None = None,
    ) -> None:
        """`content`: the archive's bytes (read from stdin), named `archive` in messages."""
        if part_bytes < MIN_CHUNK_BYTES:
            raise StateTransferError(f"a part carries at least {MIN_CHUNK_BYTES} bytes (got {part_bytes})")
        site, _, gateway = target.partition("/")
        self.target = target
        self.checked: Imported = inspect_archive(archive, site, gateway, force=force, content=content)
        self.data = archive.read_bytes() if content is None else content
        self.transfer = hashlib.sha256(self.data).hexdigest()
        self.part_bytes = part_bytes
        self.count = max(1, -(-len(self.data) // part_bytes))
        self.force = force

    def part(
        self,
        key: Ed25519PrivateKey,
        key_id: str,
        index: int,
        *,
        ttl_s: int = RESTORE_TTL_S,
        restart: bool = True,
        command_id: str | None = None,
    ) -> bytes:
        """Part `index`, signed: the envelope to publish on `{prefix}/{target}/cmd/state_restore`."""
        data = self.data[index * self.part_bytes : (index + 1) * self.part_bytes]
        args = {
            "transfer": self.transfer,
            "index": index,
            "count": self.count,
            "data": base64.b64encode(data).decode(),
            "force": self.force,
            "restart": restart,
        }
        return envelope.sign(key, key_id, COMMAND, self.target, args, ttl_s=ttl_s, command_id=command_id)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of the restore (`restored` None: not waited for, or no word within the wait)."""

    staged: dict[str, Any]  # the last part's answer: site, gateway, taken_at, files, bytes, restarting
    restored: dict[str, Any] | None  # the detail of `state_restored` / `state_restore_failed`
    restored_ok: bool
    parts_sent: int  # publishes, parts sent again included


@dataclass
class _Flight:
    index: int
    sent_at: float
    sha: str  # `sha_of` its payload


@dataclass
class _Progress:
    in_flight: dict[str, _Flight] = field(default_factory=dict)  # command id -> part
    attempts: dict[int, int] = field(default_factory=dict)
    sent_at: deque[float] = field(default_factory=deque)  # for the key's rate
    hold_until: float = 0.0  # after a `rate_limited`: the gateway counts the key's other commands too
    slowest_s: float = 0.0  # the longest a part has taken to be answered: what this link needs
    published: int = 0


class RestoreSender:
    """Sends `archive` to its gateway part by part and follows the answers (module docstring)."""

    def __init__(
        self,
        archive: RestoreArchive,
        key: Ed25519PrivateKey,
        key_id: str,
        broker: Broker,
        *,
        prefix: str = "water",
        sparkplug: str | None = None,
        per_minute: int = 30,
        answer_timeout_s: float = 60.0,
        attempts: int = 5,
        restart: bool = True,
        wait_restored_s: float = 300.0,
        ttl_s: int = RESTORE_TTL_S,
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.archive = archive
        self.key = key
        self.key_id = key_id
        self.base = f"{prefix}/{archive.target}"
        self.link = OperatorLink.to_gateway(broker, self.base, sparkplug, name="restore")
        self.per_minute = per_minute
        self.answer_timeout_s = answer_timeout_s
        self.max_attempts = attempts
        self.restart = restart
        self.wait_restored_s = wait_restored_s
        self.ttl_s = ttl_s
        self.say = say

    def run(self) -> Outcome:
        self.link.open()
        try:
            progress = _Progress()
            staged = self._send_all(progress)
            restored, ok = None, False
            if staged.get("restarting") and self.wait_restored_s > 0:
                self.say(
                    f"staged; the gateway restarts: waiting up to {self.wait_restored_s:g} s for it to say"
                )
                restored, ok = self._wait_restored()
            return Outcome(staged, restored, ok, progress.published)
        finally:
            self.link.close()

    # ------------------------------------------------------------------ sending

    def _send_all(self, progress: _Progress) -> dict[str, Any]:
        pending = deque(range(self.archive.count))
        rounds = 0
        while True:
            self._fill(pending, progress)
            answer = self._next_answer(progress)
            if answer is None:
                self._resend_late(pending, progress)
                if not pending and not progress.in_flight:
                    rounds += 1
                    if rounds > 1:
                        raise RestoreSendError(
                            f"every part was answered, and the gateway did not stage the archive "
                            f"(transfer {self.archive.transfer[:16]}): another restore sent meanwhile?"
                        )
                    pending.extend(range(self.archive.count))  # the gateway lost parts: once more whole
                continue
            if answer.command_id not in progress.in_flight:  # refused before its id could be believed
                raise RestoreSendError(
                    f"the gateway {answer.status} a {COMMAND} command without reading it: {answer.reason}"
                )
            flight = progress.in_flight.pop(answer.command_id)
            progress.slowest_s = max(progress.slowest_s, time.monotonic() - flight.sent_at)
            if answer.status == "ok":
                if answer.result.get("staged") is True:
                    return answer.result
                self.say(f"part {flight.index + 1}/{self.archive.count}: held "
                         f"({answer.result.get('received')} of {answer.result.get('of')})")  # fmt: skip
            elif (answer.reason or "").startswith("rate_limited"):
                pending.appendleft(flight.index)
                progress.hold_until = time.monotonic() + RATE_HOLD_S
            else:
                raise RestoreSendError(
                    f"part {flight.index + 1}/{self.archive.count} was {answer.status}: {answer.reason}"
                )

    def _fill(self, pending: deque[int], progress: _Progress) -> None:
        """Publish the next part when none is in flight and the key's rate allows."""
        while pending and len(progress.in_flight) < IN_FLIGHT:
            now = time.monotonic()
            if now < progress.hold_until:
                return
            while progress.sent_at and now - progress.sent_at[0] >= 60.0:
                progress.sent_at.popleft()
            if len(progress.sent_at) >= self.per_minute:
                return
            index = pending.popleft()
            attempt = progress.attempts.get(index, 0) + 1
            if attempt > self.max_attempts:
                raise RestoreSendError(
                    f"part {index + 1}/{self.archive.count} was not answered after {self.max_attempts} "
                    f"tries: is the gateway online ({self.base}/status), and may this key send "
                    f"{COMMAND} (its answers come on {self.link.events_topic})?"
                )
            progress.attempts[index] = attempt
            command_id = str(uuid.uuid4())
            payload = self.archive.part(
                self.key, self.key_id, index, ttl_s=self.ttl_s, restart=self.restart, command_id=command_id
            )
            self.link.publish(f"{self.base}/cmd/{COMMAND}", payload)
            progress.in_flight[command_id] = _Flight(index, now, sha_of(payload))
            progress.sent_at.append(now)
            progress.published += 1

    def _next_answer(self, progress: _Progress) -> Answer | None:
        """The next answer to a part in flight; None when it is time to look at the late ones."""
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.link.events.get(timeout=left)
            except queue.Empty:
                return None
            answer = answer_of(event, COMMAND)
            if answer is not None and any(answer.answers(i, f.sha) for i, f in progress.in_flight.items()):
                return answer
        return None

    def _resend_late(self, pending: deque[int], progress: _Progress) -> None:
        """Send a part again when it is late: not answered in `answer_timeout_s`, or in three
        times the longest answer yet (a slow link: a 192 KiB part over GPRS takes ~40 s)."""
        late = max(self.answer_timeout_s, 3 * progress.slowest_s)
        now = time.monotonic()
        for command_id, flight in list(progress.in_flight.items()):
            if now - flight.sent_at >= late:  # lost (the gateway offline, its inbox full): again
                del progress.in_flight[command_id]
                pending.appendleft(flight.index)

    # ------------------------------------------------------------------ after the restart

    def _wait_restored(self) -> tuple[dict[str, Any] | None, bool]:
        deadline = time.monotonic() + self.wait_restored_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.link.events.get(timeout=left)
            except queue.Empty:
                break
            detail = event.get("detail")
            if not isinstance(detail, dict) or detail.get("transfer") != self.archive.transfer:
                continue
            if event.get("kind") == "state_restored":
                return detail, True
            if event.get("kind") == "state_restore_failed":
                return detail, False
        return None, False

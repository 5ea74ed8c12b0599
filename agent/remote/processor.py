"""Verifies, authorises and dispatches one command; every decision is audited, counted and answered.

Checks, cheapest and stateless first, so an unauthenticated sender cannot fill the nonce store:
size and nesting depth on the raw bytes (before anything is parsed), shape, topic = type, known
key, Ed25519 signature, target = this gateway, time window and TTL, the key's rights for this
type, the key's rate, and last the nonce (claimed only for an otherwise valid command). Anything
failing is refused with a reason code and never reaches a handler.

Every command ends with one audit line and one `command_result`, whatever happened: refused by a
check, refused by its handler (`CommandRefusedError`: a write outside the allow-list, a config
change beyond the key's rights), failed, broken by a bug in a handler, or over its time limit
(`time_limits`, per type; `CALIBRATION_TIME_LIMIT_S` for `*_calibration`, `TIME_LIMIT_S` for the
others: `failed`, "timed out"). Refusals by the checks
above share a budget (`limits.RefusalBudget`): beyond it they are counted, and summarised in the
audit log and in the next answer, instead of costing a log line and an answer each.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import structlog
from cryptography.exceptions import InvalidSignature

from water_edge.agent.remote.audit import AuditLog
from water_edge.agent.remote.config import SecuritySection, decode_public_key
from water_edge.agent.remote.limits import KeyRates, RefusalBudget
from water_edge.agent.remote.nonces import NonceStore, NonceStoreError
from water_edge.agent.remote.result import (
    CommandCounts,
    CommandFailedError,
    CommandRefusedError,
    CommandResult,
)
from water_edge.core.envelope import Envelope, EnvelopeError, check_bounds, parse
from water_edge.core.errors import AgentError

log = structlog.get_logger(__name__)

Handler = Callable[[Envelope], Awaitable[CommandResult]]

TIME_LIMIT_S = 30.0  # a command's handler, unless `time_limits` names its type
# A `*_calibration` command fits a model on the history it names (a pump's day of 1 s rows: ~20 s on
# a Raspberry Pi). Cut off at 30 s, it was answered `failed` while its thread went on and the new
# calibration came into service anyway.
CALIBRATION_TIME_LIMIT_S = 600.0


class CommandProcessor:
    def __init__(
        self,
        config: SecuritySection,
        *,
        site: str,
        gateway: str,
        nonces: NonceStore,
        audit: AuditLog,
        handlers: Mapping[str, Handler],
        time_limits: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = config
        self.target = f"{site}/{gateway}"
        self._keys = {
            op.name: (
                decode_public_key(op.public_key),
                frozenset(op.commands),
                op.max_per_minute or config.max_commands_per_minute,
            )
            for op in config.operators
        }
        self._nonces = nonces
        self.audit = audit
        self._handlers = dict(handlers)
        self._time_limits = dict(time_limits or {})
        self._clock = clock
        self._rates = KeyRates(monotonic)
        self._budget = RefusalBudget(config.max_refusals_per_minute, monotonic)
        self._outcomes: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()

    @property
    def max_bytes(self) -> int:
        return self._cfg.max_command_bytes

    @property
    def time_limit_s(self) -> float:
        """The longest any command may run (the inbox's own bound must lie beyond it)."""
        return max([TIME_LIMIT_S, CALIBRATION_TIME_LIMIT_S, *self._time_limits.values()])

    def _limit(self, command_type: str) -> float:
        default = CALIBRATION_TIME_LIMIT_S if command_type.endswith("_calibration") else TIME_LIMIT_S
        return self._time_limits.get(command_type, default)

    def stats(self) -> CommandCounts:
        """Counters for `status`: commands by outcome, and refusals by reason code."""
        return CommandCounts(
            ok=self._outcomes["ok"],
            failed=self._outcomes["failed"],
            refused=self._outcomes["refused"],
            refused_by_reason=dict(sorted(self._refusals.items())),
        )

    async def handle(self, topic_suffix: str, payload: bytes) -> CommandResult:
        """Verify and run the command that arrived on `.../cmd/{topic_suffix}`; never raises for bad input."""
        digest = hashlib.sha256(payload).hexdigest()[:16]
        result = await self._handle(topic_suffix, payload, digest)
        result.payload_sha = digest
        return result

    async def _handle(self, topic_suffix: str, payload: bytes, digest: str) -> CommandResult:
        try:
            env = self.authenticate(topic_suffix, payload)
        except EnvelopeError as exc:
            # Nobody vouched for the id or key the payload names: neither is echoed nor audited.
            return self.refuse(exc.code, str(exc), topic_suffix, digest)
        try:
            self.admit(env)
        except EnvelopeError as exc:
            # Signed: the answer and the audit line name the command and the key that signed it,
            # so that its sender can match the answer and the audit log shows whose was refused.
            return self.refuse(exc.code, str(exc), topic_suffix, digest, env=env)
        handler = self._handlers.get(env.type)
        if handler is None:
            return self.refuse(
                "unsupported", f"no handler for {env.type!r} on this gateway", topic_suffix, digest, env=env
            )
        if not self.audit.record("command", "accepted", id=env.id, type=env.type, key=env.key_id, sha=digest):
            # Fail closed: nothing runs on this gateway that its audit log cannot show.
            self._count_refusal("audit_unavailable")
            return CommandResult(
                "refused", env.id, env.type, f"audit_unavailable: {self.audit.last_error}; not run"
            )
        result = await self._run(handler, env)
        result.command_id, result.command_type = env.id, env.type
        if result.status == "refused":
            self._count_refusal(result.reason or "refused")
        else:
            self._outcomes[result.status] += 1
        self.audit.record(
            "command", result.status, id=env.id, type=env.type, key=env.key_id, reason=result.reason
        )
        return result

    async def _run(self, handler: Handler, env: Envelope) -> CommandResult:
        limit = self._limit(env.type)
        try:
            async with asyncio.timeout(limit):
                return await self._outcome(handler, env)
        except TimeoutError:  # the limit's (one the handler raised is its outcome, below)
            log.error("command.timed_out", id=env.id, type=env.type, after_s=limit)
            return CommandResult("failed", reason=f"timed out after {limit:g} s")

    async def _outcome(self, handler: Handler, env: Envelope) -> CommandResult:
        try:
            return await handler(env)
        except CommandRefusedError as exc:
            return CommandResult("refused", reason=f"{exc.code}: {exc.reason}")
        except CommandFailedError as exc:
            return CommandResult("failed", reason=exc.reason, detail=exc.detail)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            return CommandResult("failed", reason=f"{exc.strerror or exc}{where}")
        except AgentError as exc:
            return CommandResult("failed", reason=str(exc))
        except Exception as exc:
            # The command worker's last resort: a handler bug must still end in an audit line and
            # an answer, never in silence after "accepted".
            log.exception("command.handler_crashed", id=env.id, type=env.type)
            return CommandResult("failed", reason=f"internal error: {type(exc).__name__}")

    def verify(self, topic_suffix: str, payload: bytes) -> Envelope:
        """The envelope if it passes every check; EnvelopeError(code, message) otherwise."""
        env = self.authenticate(topic_suffix, payload)
        self.admit(env)
        return env

    def authenticate(self, topic_suffix: str, payload: bytes) -> Envelope:
        """The envelope if it is well formed, sent on its type's topic and signed by a trusted key;
        EnvelopeError(code, message) otherwise. Nothing in it is to be believed before this."""
        cfg = self._cfg
        check_bounds(payload, cfg.max_command_bytes, cfg.max_command_depth)
        env = parse(payload)
        if topic_suffix.removeprefix("cmd/") != env.type:
            raise EnvelopeError("topic_mismatch", f"type {env.type!r} sent on topic cmd/{topic_suffix[:64]}")
        entry = self._keys.get(env.key_id)
        if entry is None:
            raise EnvelopeError("unknown_key", f"key {env.key_id!r} is not trusted by this gateway")
        try:
            entry[0].verify(env.signature, env.signed_bytes)
        except InvalidSignature:
            raise EnvelopeError(
                "bad_signature", f"signature does not verify with key {env.key_id!r}"
            ) from None
        return env

    def admit(self, env: Envelope) -> None:
        """EnvelopeError(code, message) unless the authenticated `env` may run here, now: its
        target, time window, TTL, the key's rights and rate, and its nonce (claimed last)."""
        cfg = self._cfg
        _public, allowed, per_minute = self._keys[env.key_id]
        if env.target != self.target:
            raise EnvelopeError("wrong_target", f"for {env.target!r}, this is {self.target!r}")
        now = self._check_time(env)
        if env.type not in allowed:
            raise EnvelopeError("not_authorised", f"key {env.key_id!r} may not send {env.type!r}")
        try:
            # A replay is told apart before the rate: resent by whoever may publish on the command
            # topic, it would otherwise use up its key's rate and lock the operator out.
            if self._nonces.seen(env.nonce):
                raise EnvelopeError("replay", f"nonce of command {env.id!r} was already used")
            if not self._rates.allow(env.key_id, per_minute):
                raise EnvelopeError(
                    "rate_limited", f"key {env.key_id!r} sent over {per_minute} commands a minute"
                )
            # Kept until expiry + skew: until then the time check alone would still let a replay in.
            if not self._nonces.claim(env.nonce, env.expires_at + cfg.clock_skew_s, now):
                raise EnvelopeError("replay", f"nonce of command {env.id!r} was already used")
        except NonceStoreError as exc:
            # Fail closed: a command whose nonce cannot be recorded could be replayed.
            raise EnvelopeError("nonce_store_unavailable", f"{exc}; not run") from None

    def _check_time(self, env: Envelope) -> int:
        """The gateway's time now if `env` is within its time window; EnvelopeError otherwise."""
        cfg = self._cfg
        now = int(self._clock())
        if env.expires_at < now - cfg.clock_skew_s:
            raise EnvelopeError("expired", f"expired {now - env.expires_at} s ago")
        # The nonce store forgets a command's nonce once it expired by the latest time it pruned at;
        # a clock that went back since (a power cut without an RTC) must not let that command in.
        latest = self._nonces.latest_claim
        if latest is not None and env.expires_at < latest - cfg.clock_skew_s:
            raise EnvelopeError(
                "expired",
                f"expired {latest - env.expires_at} s before a time this gateway has already seen "
                f"(its clock is {latest - now} s behind that)",
            )
        if env.issued_at > now + cfg.clock_skew_s:
            raise EnvelopeError("not_yet_valid", f"issued {env.issued_at - now} s in the future")
        until = self.refuses_issued_until
        if until is not None and env.issued_at <= until:
            raise EnvelopeError(
                "issued_before_nonce_reset",
                f"issued at {env.issued_at}, not after {until}: this gateway's nonce store was started "
                f"afresh at {self._nonces.reset_at} and clocks may differ by {cfg.clock_skew_s} s, so a "
                f"replay could not be told apart; sign it again (issued after {until})",
            )
        if env.expires_at - env.issued_at > cfg.max_command_ttl_s:
            raise EnvelopeError("ttl_too_long", f"lifetime over {cfg.max_command_ttl_s} s")
        return now

    @property
    def refuses_issued_until(self) -> int | None:
        """After the nonce store was started afresh: every command issued up to this time (unix s;
        the reset plus the clock skew allowed) is refused as `issued_before_nonce_reset`."""
        reset_at = self._nonces.reset_at
        return None if reset_at is None else reset_at + self._cfg.clock_skew_s

    def _count_refusal(self, reason: str) -> None:
        self._refusals[reason.split(":", 1)[0]] += 1
        self._outcomes["refused"] += 1

    def refuse(
        self,
        code: str,
        message: str,
        topic: str,
        digest: str,
        *,
        env: Envelope | None = None,
        size: int | None = None,
    ) -> CommandResult:
        """A refusal before any handler ran: counted always; audited and answered within the budget."""
        topic = topic[:64]  # the sender chose it: it must not make the answer or the audit line long
        self._count_refusal(code)
        ident = {
            "id": env.id if env else None,
            "type": env.type if env else topic,
            "key": env.key_id if env else None,
        }
        result = CommandResult(
            "refused", ident["id"], ident["type"], f"{code}: {message}", payload_sha=digest
        )
        if not self._budget.admit():
            result.quiet = True
            return result
        suppressed = self._budget.take_suppressed()
        if suppressed:
            self.audit.record("command", "refused", reason="suppressed", count=suppressed, window_s=60)
            result.detail = {"refusals_not_answered": suppressed}
        self.audit.record(
            "command", "refused", reason=code, message=message, topic=topic, sha=digest, size=size, **ident
        )
        return result

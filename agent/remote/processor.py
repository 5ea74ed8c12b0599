"""Verifies, authorises and dispatches one command; every decision is audited and counted.

Checks, cheapest and stateless first, so an unauthenticated sender cannot fill the nonce store:
size, shape, topic = type, known key, Ed25519 signature, target = this gateway, time window and
TTL, the key's rights for this type, and last the nonce (claimed only for an otherwise valid
command). Anything failing is refused with a reason code and never reaches a handler.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import structlog
from cryptography.exceptions import InvalidSignature

from water_edge.agent.remote.audit import AuditLog
from water_edge.agent.remote.config import SecuritySection, decode_public_key
from water_edge.agent.remote.nonces import NonceStore
from water_edge.agent.remote.result import CommandCounts, CommandFailedError, CommandResult
from water_edge.core.envelope import Envelope, EnvelopeError, parse

log = structlog.get_logger(__name__)

Handler = Callable[[Envelope], Awaitable[CommandResult]]


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = config
        self.target = f"{site}/{gateway}"
        self._keys = {
            op.name: (decode_public_key(op.public_key), frozenset(op.commands)) for op in config.operators
        }
        self._nonces = nonces
        self.audit = audit
        self._handlers = dict(handlers)
        self._clock = clock
        self._outcomes: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()

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
        try:
            env = self.verify(topic_suffix, payload)
        except EnvelopeError as exc:
            return self._refuse(exc.code, str(exc), topic_suffix, digest, None)
        handler = self._handlers.get(env.type)
        if handler is None:
            return self._refuse(
                "unsupported", f"no handler for {env.type!r} on this gateway", topic_suffix, digest, env
            )
        self.audit.record("command", "accepted", id=env.id, type=env.type, key=env.key_id, sha=digest)
        try:
            result = await handler(env)
        except CommandFailedError as exc:
            result = CommandResult("failed", reason=exc.reason, detail=exc.detail)
        result.command_id, result.command_type = env.id, env.type
        self._outcomes[result.status] += 1
        self.audit.record(
            "command", result.status, id=env.id, type=env.type, key=env.key_id, reason=result.reason
        )
        return result

    def verify(self, topic_suffix: str, payload: bytes) -> Envelope:
        """The envelope if it passes every check; EnvelopeError(code, message) otherwise."""
        cfg = self._cfg
        if len(payload) > cfg.max_command_bytes:
            raise EnvelopeError("too_large", f"{len(payload)} bytes > {cfg.max_command_bytes}")
        env = parse(payload)
        if topic_suffix.removeprefix("cmd/") != env.type:
            raise EnvelopeError("topic_mismatch", f"type {env.type!r} sent on topic cmd/{topic_suffix}")
        entry = self._keys.get(env.key_id)
        if entry is None:
            raise EnvelopeError("unknown_key", f"key {env.key_id!r} is not trusted by this gateway")
        public, allowed = entry
        try:
            public.verify(env.signature, env.signed_bytes)
        except InvalidSignature:
            raise EnvelopeError(
                "bad_signature", f"signature does not verify with key {env.key_id!r}"
            ) from None
        if env.target != self.target:
            raise EnvelopeError("wrong_target", f"for {env.target!r}, this is {self.target!r}")
        now = int(self._clock())
        if env.expires_at < now - cfg.clock_skew_s:
            raise EnvelopeError("expired", f"expired {now - env.expires_at} s ago")
        if env.issued_at > now + cfg.clock_skew_s:
            raise EnvelopeError("not_yet_valid", f"issued {env.issued_at - now} s in the future")
        if env.expires_at - env.issued_at > cfg.max_command_ttl_s:
            raise EnvelopeError("ttl_too_long", f"lifetime over {cfg.max_command_ttl_s} s")
        if env.type not in allowed:
            raise EnvelopeError("not_authorised", f"key {env.key_id!r} may not send {env.type!r}")
        # Kept until expiry + skew: until then the time check alone would still let a replay in.
        if not self._nonces.claim(env.nonce, env.expires_at + cfg.clock_skew_s, now):
            raise EnvelopeError("replay", f"nonce of command {env.id!r} was already used")
        return env

    def _refuse(
        self, code: str, message: str, topic: str, digest: str, env: Envelope | None
    ) -> CommandResult:
        self._refusals[code] += 1
        self._outcomes["refused"] += 1
        self.audit.record(
            "command",
            "refused",
            reason=code,
            message=message,
            topic=topic[:64],
            sha=digest,
            id=env.id if env else None,
            key=env.key_id if env else None,
        )
        return CommandResult(
            "refused", env.id if env else None, env.type if env else None, f"{code}: {message}"
        )

"""The OPC UA client driver: the one module that calls asyncua's client (built by the factory the
driver is given, default `asyncua_client`); what it raises is translated by `errors.py`.

`open()` connects (security policy, client certificate, optional user), resolves browse paths,
learns units from EngineeringUnits, then subscribes: one subscription, one monitored item per
tag (sampling interval and deadband per tag). `stream()` yields one list of readings per
publish. If the server refuses subscriptions (or `mode = "poll"`), `stream()` polls with Read
requests every `poll_interval_ms` instead. `read()` is a one-shot Read of every tag (`probe`).

asyncua is never allowed to reconnect on its own: a lost connection (its watchdog, a status
change on the subscription, BadNoSubscription in answer to a publish, or silence beyond
`stale_after_ms`: no data and no keep-alive, asked for every `KEEPALIVE_MS`) ends `stream()` with
`DriverIOError`; the supervisor stands in bad readings, backs off and calls `open()` again,
which re-creates the session and the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Self, TypeVar, cast

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription
from asyncua.crypto import security_policies, uacrypto
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import BAD, GOOD, UNCERTAIN, Quality, Reading, Value
from water_edge.core.scheduler import FixedRateTicker
from water_edge.core.secrets import resolve_secret
from water_edge.drivers.base import DeviceConfig, TagInfo
from water_edge.drivers.opcua import browse, fast_publish
from water_edge.drivers.opcua.certificate_file import not_after_ns, parse_certificate
from water_edge.drivers.opcua.config import OpcUaConfig, OpcUaTag, parse_node_id
from water_edge.drivers.opcua.errors import explain, ua_errors
from water_edge.drivers.opcua.fast_publish import DataChanges
from water_edge.drivers.opcua.health import OpcUaHealth
from water_edge.drivers.opcua.values import (
    TIME_CLOCK,
    TIME_OK,
    judge_time,
    reading_parts,
    sent_ns,
    sent_ticks_ns,
    status_name,
    unit_from_eu,
    value_parts,
)

log = structlog.get_logger(__name__)

# Status codes with which a server says it will not do subscriptions: fall back to polling.
NO_SUBSCRIPTIONS: Final = frozenset({
    StatusCodes.BadServiceUnsupported,
    StatusCodes.BadTooManySubscriptions,
    StatusCodes.BadNotSupported,
    StatusCodes.BadNotImplemented,
})  # fmt: skip
MAX_QUEUED_BATCHES: Final = 256
# The keep-alive period asked of the server: a quiet subscription still answers this often, so
# that one that stopped publishing is noticed within `stale_after_ms` (3 of these by default).
KEEPALIVE_MS: Final = 5000
# The largest message taken from a server (asyncua: no limit): a hostile one cannot send a gigabyte.
MAX_MESSAGE_BYTES: Final = 32 << 20
# asyncua annotates Boolean fields with a marker class that plain bools do not satisfy
_TRUE: Final = cast(ua.Boolean, True)
_FALSE: Final = cast(ua.Boolean, False)
_LOST: Final = object()
_T = TypeVar("_T")
_R = TypeVar("_R")
# The server's operation limits (Server/ServerCapabilities/OperationLimits) for the services the
# driver sends in batches; 0 or absent means none (OPC UA Part 5, 6.3.11).
OPERATION_LIMITS: Final = {
    "read": ua.NodeId.from_string("i=11705"),  # MaxNodesPerRead
    "monitor": ua.NodeId.from_string("i=11714"),  # MaxMonitoredItemsPerCall
    "translate": ua.NodeId.from_string("i=11712"),  # MaxNodesPerTranslateBrowsePathsToNodeIds
}

POLICIES: Final[dict[str, type[security_policies.SecurityPolicy]]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}

# Builds the (not yet connected) client for a device; the driver configures and connects it.
ClientFactory = Callable[[OpcUaConfig], Client]


def asyncua_client(config: OpcUaConfig) -> Client:
    """The real client; its own reconnect stays off (the supervisor owns reconnects)."""
    client = Client(config.endpoint, timeout=config.request_timeout_ms / 1000)
    client.max_messagesize = MAX_MESSAGE_BYTES  # values themselves: `values.MAX_TEXT_CHARS`
    return client


class _Feed(Subscription):
    """A subscription handing each whole PublishResult to the driver (one call per publish,
    not one task per notification as asyncua's handler path does)."""

    def __init__(self, session: Any, params: ua.CreateSubscriptionParameters, driver: OpcUaDriver) -> None:
        super().__init__(session, params, None, queue_maxsize=1)
        self._driver = driver

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        self._driver._on_publish(publish_result)


@dataclass(frozen=True, slots=True)
class BrowsedVariable:
    """A variable the server has, as `OpcUaDriver.browse` found it."""

    path: str | None  # below Objects, as a tag's `path` (None: a name on the way holds "/")
    node: str  # as a tag's `node`, by namespace URI
    data_type: str | None  # the value's variant type (Float, Double, String, ...)
    value: Value
    quality: Quality
    reason: str | None
    unit: str  # from its EngineeringUnits, "" without


class OpcUaDriver:
    """Subscribes to (or polls) the configured variables of one OPC UA server."""

    config_model: ClassVar[type[DeviceConfig]] = OpcUaConfig

    def __init__(self, config: OpcUaConfig, client_factory: ClientFactory | None = None) -> None:
        self.name = config.name
        self._config = config
        self._new_client = client_factory or asyncua_client
        self._units = [t.unit for t in config.tags]
        self._nodes: list[ua.NodeId | None] = []
        self._unresolved: dict[int, str] = {}
        self._client: Client | None = None
        self._sub: _Feed | None = None
        self._queue: deque[list[Reading] | object] = deque()
        self._wakeup = asyncio.Event()
        self._lost_reason: str | None = None
        # The server stopped answering (asyncua's own timeouts, or the subscription went silent):
        # closed without a CloseSession it would never answer (`_quiet_disconnect`).
        self._unanswered = False
        self._polling = config.mode == "poll"
        self._fallback: str | None = None
        self._failed_items: dict[str, str] = {}
        # Items per request of each batched service: `max_items_per_request`, lowered to the
        # server's operation limits at connect, and halved when it answers BadTooManyOperations.
        self._batch = dict.fromkeys(OPERATION_LIMITS, config.max_items_per_request)
        self._stats = {
            "publishes": 0, "notifications": 0, "reads": 0, "dropped_batches": 0, "keepalives": 0,
            "uncertain_values": 0, "bad_values": 0, "clock_replaced": 0,
        }  # fmt: skip
        self._clock_offset_s: float | None = None
        # The client certificate's end of validity, as read at the last connection attempt.
        self._certificate_not_after_ns: int | None = None
        self._clock_warned = False
        # tag index -> (device time, arrival) of its last value whose time was far back, unchanged
        self._unchanged: dict[int, tuple[int, int]] = {}
        self._tolerance_ns = config.clock_tolerance_ms * 1_000_000
        self._keepalive_s: float | None = None  # the server's revised keep-alive period
        self._last_ok_ns: int | None = None
        self._connected = False
        self.fast_publishes = 0  # publish responses decoded by fast_publish, not asyncua

    @classmethod
    def from_config(cls, config: Any) -> Self:
        if not isinstance(config, OpcUaConfig):
            config = OpcUaConfig.model_validate(config)
        return cls(config)

    @property
    def config(self) -> OpcUaConfig:
        return self._config

    def tags(self) -> Sequence[TagInfo]:
        return [TagInfo(t.name, u) for t, u in zip(self._config.tags, self._units, strict=True)]

    def health(self) -> OpcUaHealth:
        s = self._stats
        return OpcUaHealth(
            publishes=s["publishes"],
            notifications=s["notifications"],
            reads=s["reads"],
            dropped_batches=s["dropped_batches"],
            keepalives=s["keepalives"],
            uncertain_values=s["uncertain_values"],
            bad_values=s["bad_values"],
            clock_replaced=s["clock_replaced"],
            device_clock_offset_s=self._clock_offset_s,
            connected=self._connected,
            mode="poll" if self._polling else "subscribe",
            fallback=self._fallback,
            unresolved={self._config.tags[i].name: why for i, why in self._unresolved.items()},
            failed_items=dict(self._failed_items),
            last_ok_ns=self._last_ok_ns,
            batch_limits={k: n for k, n in self._batch.items() if n < self._config.max_items_per_request},
            client_certificate_not_after_ns=self._certificate_not_after_ns,
        )

    # --- connecting -------------------------------------------------------------------------

    async def open(self) -> None:
        await self.aclose()
        cfg = self._config
        self._lost_reason = None
        self._unanswered = False
        self._clock_warned = False
        self._unchanged.clear()
        self._queue.clear()
        self._polling = cfg.mode == "poll"
        self._fallback = None
        client = self._new_client(cfg)
        client.session_timeout = cfg.session_timeout_ms
        client.name = client.description = f"water-edge-agent {self.name}"
        client.application_uri = f"urn:water-edge-agent:{self.name}"
        try:
            # ValueError: a certificate or key file missing or unreadable (checked before connecting)
            with ua_errors(f"{self.name}: cannot connect to {cfg.endpoint}", ValueError):
                await self._configure_security(client)
                if cfg.username is not None:
                    client.set_user(cfg.username)
                    client.set_password(resolve_secret(cfg.password) or "")
                client.connection_lost_callback = self._on_connection_lost
                async with asyncio.timeout(2 * cfg.request_timeout_ms / 1000):
                    await client.connect()
        except DriverIOError:
            await _quiet_disconnect(client)
            raise
        except BaseException:  # cancelled (the supervisor's guard, a stop): no goodbye, no socket left
            client.connection_lost_callback = None
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            raise
        self._client = client
        self._connected = True
        try:
            with ua_errors(self.name):
                await self._learn_limits(client)
                await self._resolve(client)
                await self._learn_units(client)
                if not self._polling:
                    await self._subscribe(client)
        except DriverIOError:
            await self.aclose()
            raise
        log.info(
            "opcua.connected",
            driver=self.name,
            endpoint=cfg.endpoint,
            mode="poll" if self._polling else "subscribe",
            security=cfg.security_mode,
        )

    async def _configure_security(self, client: Client) -> None:
        cfg = self._config
        if cfg.security_policy == "None":
            return
        # both are required with a policy (checked by the config)
        assert cfg.certificate is not None
        assert cfg.private_key is not None
        cert = _load_file(cfg.certificate, "certificate")
        if cert is not None:
            self._certificate_not_after_ns = not_after_ns(cert)
        _load_file(cfg.private_key, "private_key")
        uri = _certificate_uri(cert)
        if uri:
            client.application_uri = uri  # servers check it against the certificate's SAN
        server_cert = None
        if cfg.server_certificate is not None:
            server_cert = uacrypto.CertProperties(str(_require(cfg.server_certificate, "server_certificate")))
        mode = ua.MessageSecurityMode.SignAndEncrypt
        if cfg.security_mode == "Sign":
            mode = ua.MessageSecurityMode.Sign
        await client.set_security(
            POLICIES[cfg.security_policy],
            str(cfg.certificate),
            str(cfg.private_key),
            server_certificate=server_cert,
            mode=mode,
        )

    async def _learn_limits(self, client: Client) -> None:
        """Lower the batches to the server's operation limits: a server that takes 100 nodes a Read
        answers a Read of 1000 with BadTooManyOperations, for every tag at once."""
        self._batch = dict.fromkeys(OPERATION_LIMITS, self._config.max_items_per_request)
        nodes = [ua.ReadValueId(NodeId=n, AttributeId=AttributeIds.Value) for n in OPERATION_LIMITS.values()]
        params = ua.ReadParameters(NodesToRead=nodes)
        try:
            values = await client.uaclient.read(params)
        except UaStatusCodeError:
            return  # a server without them: the batches stay as configured, halved if refused
        for service, dv in zip(OPERATION_LIMITS, values, strict=True):
            good = dv.StatusCode is None or dv.StatusCode.is_good()
            limit = dv.Value.Value if good and dv.Value is not None else None
            if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < self._batch[service]:
                self._batch[service] = limit
        lowered = {k: n for k, n in self._batch.items() if n < self._config.max_items_per_request}
        if lowered:
            log.info("opcua.operation_limits", driver=self.name, **lowered)

    async def _batched(
        self, service: str, items: list[_T], call: Callable[[list[_T]], Awaitable[list[_R]]]
    ) -> list[_R]:
        """`call` on `items` in batches of the service's size, in order; a batch the server refuses
        with BadTooManyOperations (a limit it enforces but does not publish) is sent again halved,
        and the smaller size kept for this connection."""
        out: list[_R] = []
        done = 0
        while done < len(items):
            size = self._batch[service]
            chunk = items[done : done + size]
            try:
                out += await call(chunk)
            except UaStatusCodeError as exc:
                if exc.code != StatusCodes.BadTooManyOperations or len(chunk) == 1:
                    raise
                self._batch[service] = len(chunk) // 2
                log.warning(
                    "opcua.batch_lowered",
                    driver=self.name,
                    service=service,
                    items=self._batch[service],
                    why=f"the server refused {len(chunk)} in one request (BadTooManyOperations)",
                )
                continue
            done += len(chunk)
        return out

    async def _resolve(self, client: Client) -> None:
        """NodeIds for every tag; a path that does not resolve, or a NodeId that cannot be sent,
        makes that tag bad, not the device.

        A namespace given by URI (`nsu=`) is looked up in the server's NamespaceArray at every
        open: a server may number its namespaces differently after a restart."""
        self._nodes = []
        self._unresolved = {}
        children: dict[ua.NodeId, list[ua.ReferenceDescription]] = {}
        namespaces: list[str] | None = None
        for i, tag in enumerate(self._config.tags):
            if tag.node is not None:
                try:
                    node_id = parse_node_id(tag.node)
                except ValueError as exc:
                    # The config refuses these; one that got past it must not fail every request.
                    self._unresolved[i] = f"unusable NodeId {tag.node!r}: {exc}"
                    self._nodes.append(None)
                    continue
                uri = node_id.NamespaceUri if isinstance(node_id, ua.ExpandedNodeId) else None
                if uri:
                    if namespaces is None:
                        namespaces = [str(u) for u in await client.get_namespace_array()]
                    if uri not in namespaces:
                        self._unresolved[i] = f"namespace not on the server: {uri}"
                        self._nodes.append(None)
                        continue
                    identifier = tag.node.split(";", 1)[1]  # the config's pattern keeps ';' out of URIs
                    node_id = ua.NodeId.from_string(f"ns={namespaces.index(uri)};{identifier}")
                self._nodes.append(node_id)
                continue
            try:
                self._nodes.append(await browse.resolve(client, tag.path or "", children))
            except browse.PathNotFoundError as exc:
                self._unresolved[i] = str(exc)
                self._nodes.append(None)
        if self._unresolved:
            log.warning(
                "opcua.unresolved",
                driver=self.name,
                tags=len(self._unresolved),
                first=next(iter(self._unresolved.values())),
            )

    async def _learn_units(self, client: Client) -> None:
        """Units from the EngineeringUnits property of tags whose config gives none."""
        wanted = [
            i
            for i, (t, n) in enumerate(zip(self._config.tags, self._nodes, strict=True))
            if not t.unit and n is not None
        ]
        nodes = [n for n in (self._nodes[i] for i in wanted) if n is not None]
        for i, unit in (await self._engineering_units(client, nodes)).items():
            self._units[wanted[i]] = unit

    async def _engineering_units(self, client: Client, nodes: list[ua.NodeId]) -> dict[int, str]:
        """Index in `nodes` -> the unit its EngineeringUnits property gives (where it has one)."""
        if not nodes:
            return {}
        element = ua.RelativePathElement(
            ReferenceTypeId=browse.HAS_PROPERTY,
            IsInverse=_FALSE,
            IncludeSubtypes=_TRUE,
            TargetName=ua.QualifiedName("EngineeringUnits", 0),
        )
        paths = [ua.BrowsePath(StartingNode=n, RelativePath=ua.RelativePath([element])) for n in nodes]
        results = await self._batched("translate", paths, client.uaclient.translate_browsepaths_to_nodeids)
        found: list[tuple[int, ua.NodeId]] = [
            (
                i,
                r.Targets[0].TargetId.to_nodeid()
                if hasattr(r.Targets[0].TargetId, "to_nodeid")
                else ua.NodeId(r.Targets[0].TargetId.Identifier, r.Targets[0].TargetId.NamespaceIndex),
            )
            for i, r in enumerate(results)
            if r.StatusCode.is_good() and r.Targets
        ]
        values = await self._read_values(client, [n for _, n in found])
        units: dict[int, str] = {}
        for (i, _), dv in zip(found, values, strict=True):
            eu = dv.Value.Value if dv.Value is not None else None
            if isinstance(eu, ua.EUInformation):
                units[i] = unit_from_eu(eu)
        return units

    async def browse(
        self, path: str = "", *, depth: int = 8, limit: int = 2000
    ) -> tuple[list[BrowsedVariable], bool]:
        """Every variable below `path` (below Objects; "" for all), with its current value, type and
        unit, and whether `limit` cut the walk short (commissioning: `edge-agent scan opcua`).
        The driver must be open."""
        client = self._client
        if client is None or not self._connected:
            raise DriverIOError(f"{self.name}: not connected")
        with ua_errors(f"{self.name}: browse failed"):
            try:
                start = await browse.resolve(client, path)
            except browse.PathNotFoundError as exc:
                raise DriverIOError(f"{self.name}: {exc}") from exc
            namespaces = [str(u) for u in await client.get_namespace_array()]
            found, truncated = await browse.variables(
                client, start, path.strip("/"), depth=depth, limit=limit, namespaces=namespaces
            )
            nodes = [f.node_id for f in found]
            values = await self._read_values(client, nodes)
            units = await self._engineering_units(client, nodes)
        receive = time.time_ns()
        out = []
        for i, (f, dv) in enumerate(zip(found, values, strict=True)):
            _, value, quality, reason = reading_parts(dv, receive, tolerance_ns=self._tolerance_ns)
            kind = dv.Value.VariantType.name if dv.Value is not None and dv.Value.Value is not None else None
            out.append(BrowsedVariable(f.path, f.node, kind, value, quality, reason, units.get(i, "")))
        return out, truncated

    async def _subscribe(self, client: Client) -> None:
        cfg = self._config
        keepalive_count = max(1, math.ceil(KEEPALIVE_MS / cfg.publishing_interval_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=cfg.publishing_interval_ms,
            RequestedLifetimeCount=max(10_000, 3 * keepalive_count),
            RequestedMaxKeepAliveCount=keepalive_count,
            MaxNotificationsPerPublish=0,  # 0 = no limit: one publish carries every change
            PublishingEnabled=True,
            Priority=0,
        )
        # Data changes decoded in fast_publish where it can, by asyncua where it cannot.
        fast_publish.install(
            client.uaclient.session, self._count_fast, lambda: self._subscription_gone(client)
        )
        sub = _Feed(client.uaclient.session, params, self)
        try:
            revised = await sub.init()
        except UaStatusCodeError as exc:
            if exc.code not in NO_SUBSCRIPTIONS:
                raise
            self._polling = True
            self._fallback = f"server refused subscriptions ({status_name(exc.code)}); polling"
            log.warning("opcua.poll_fallback", driver=self.name, reason=self._fallback)
            return
        self._sub = sub
        self._keepalive_s = revised.RevisedPublishingInterval * revised.RevisedMaxKeepAliveCount / 1000
        requests = [
            self._item_request(i, tag, node)
            for i, (tag, node) in enumerate(zip(cfg.tags, self._nodes, strict=True))
            if node is not None
        ]
        self._failed_items = {}
        results = await self._batched("monitor", requests, sub.create_monitored_items)
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, ua.StatusCode):
                name = cfg.tags[request.RequestedParameters.ClientHandle].name
                self._failed_items[name] = status_name(result.value)
        if self._failed_items:
            log.warning(
                "opcua.items_refused",
                driver=self.name,
                count=len(self._failed_items),
                first=next(iter(self._failed_items.items())),
            )
        self._stand_in_unsubscribed()

    def _item_request(self, handle: int, tag: OpcUaTag, node: ua.NodeId) -> ua.MonitoredItemCreateRequest:
        cfg = self._config
        mparams = ua.MonitoringParameters(
            ClientHandle=handle,
            SamplingInterval=tag.sampling_interval_ms
            if tag.sampling_interval_ms is not None
            else cfg.sampling_interval_ms,
            QueueSize=cfg.queue_size,
            DiscardOldest=True,
        )
        if tag.deadband is not None:
            mparams.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Absolute
                if tag.deadband.type == "absolute"
                else ua.DeadbandType.Percent,
                DeadbandValue=tag.deadband.value,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=mparams,
        )

    def _stand_in_unsubscribed(self) -> None:
        """Tags the server will never notify (unresolved, refused): one bad reading each, now."""
        ts = time.time_ns()
        bad = [
            Reading(self.name, tag.name, ts, None, BAD, self._units[i], self._unresolved.get(i)
                    or f"monitored item refused: {self._failed_items[tag.name]}")
            for i, tag in enumerate(self._config.tags)
            if i in self._unresolved or tag.name in self._failed_items
        ]  # fmt: skip
        if bad:
            self._push(bad)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._sub = None
        self._keepalive_s = None
        self._connected = False
        if client is not None:
            await _quiet_disconnect(client, unanswered=self._unanswered)

    # --- data -------------------------------------------------------------------------------

    async def read(self) -> list[Reading]:
        client = self._client
        if client is None or not self._connected:
            raise DriverIOError(f"{self.name}: not connected")
        present = [(i, n) for i, n in enumerate(self._nodes) if n is not None]
        with ua_errors(f"{self.name}: read failed"):
            values = await self._read_values(client, [n for _, n in present])
        receive = time.time_ns()
        self._stats["reads"] += 1
        self._last_ok_ns = receive
        by_index = dict(zip((i for i, _ in present), values, strict=True))
        out = []
        for i, tag in enumerate(self._config.tags):
            dv = by_index.get(i)
            if dv is None:
                why = self._unresolved[i]
                out.append(Reading(self.name, tag.name, receive, None, BAD, self._units[i], why))
                continue
            out.append(self._reading(i, dv, receive))
        return out

    async def _read_values(self, client: Client, nodes: Sequence[ua.NodeId]) -> list[ua.DataValue]:
        async def read(chunk: list[ua.NodeId]) -> list[ua.DataValue]:
            params = ua.ReadParameters(
                NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=AttributeIds.Value) for n in chunk],
                TimestampsToReturn=ua.TimestampsToReturn.Both,
            )
            values: list[ua.DataValue] = await client.uaclient.read(params)
            return values

        return await self._batched("read", list(nodes), read)

    async def stream(self) -> AsyncIterator[list[Reading]]:
        if self._client is None:
            raise DriverIOError(f"{self.name}: not connected")
        if self._polling:
            async for batch in self._poll():
                yield batch
            return
        stale_s = self._stale_after_s()
        while True:
            while not self._queue:
                if self._lost_reason is not None:
                    raise DriverIOError(f"{self.name}: {self._lost_reason}")
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(stale_s):
                        await self._wakeup.wait()
                except TimeoutError:
                    self._unanswered = True
                    await self.aclose()
                    raise DriverIOError(
                        f"{self.name}: subscription silent for {stale_s:g} s (no data, no keep-alive)"
                    ) from None
            item = self._queue.popleft()
            if item is _LOST:
                continue  # _lost_reason is set; raised above once the data before it is out
            yield item  # type: ignore[misc]

    async def _poll(self) -> AsyncIterator[list[Reading]]:
        ticker = FixedRateTicker(self._config.poll_interval_ms / 1000)
        while True:
            yield await self.read()
            await ticker.wait()

    def _stale_after_s(self) -> float:
        cfg = self._config
        if cfg.stale_after_ms is not None:
            return cfg.stale_after_ms / 1000
        # the keep-alive period the server granted (it may revise what was asked)
        return max(5.0, 3 * (self._keepalive_s or KEEPALIVE_MS / 1000))

    def _on_publish(self, result: ua.PublishResult) -> None:
        """Called by the publish loop once per PublishResponse: readings for every notification."""
        data = result.NotificationMessage.NotificationData
        self._stats["publishes"] += 1
        self._wakeup.set()
        if not data:
            self._stats["keepalives"] += 1
            return
        receive = time.time_ns()
        source, tags, units, tolerance = self.name, self._config.tags, self._units, self._tolerance_ns
        batch: list[Reading] = []
        for notification in data:
            if isinstance(notification, DataChanges):
                for i, status, source_ticks, server_ticks, raw in notification.items:
                    ts, verdict, device = judge_time(
                        sent_ticks_ns(source_ticks), sent_ticks_ns(server_ticks), receive, tolerance
                    )
                    if verdict != TIME_OK:
                        self._judge_clock(i, verdict, device, receive)
                    ts, value, quality, reason = value_parts(status, ts, raw)
                    if quality != GOOD:
                        self._count(quality)
                    batch.append(Reading(source, tags[i].name, ts, value, quality, units[i], reason))
            elif isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    batch.append(self._reading(item.ClientHandle, item.Value, receive))
            elif isinstance(notification, ua.StatusChangeNotification):
                self._lost(f"subscription status {status_name(notification.Status.value)}")
        if batch:
            self._stats["notifications"] += len(batch)
            self._last_ok_ns = receive
            self._push(batch)

    def _reading(self, i: int, dv: ua.DataValue, receive: int) -> Reading:
        """The reading of tag `i` from a DataValue asyncua decoded (a Read, a data change)."""
        ts, verdict, device = judge_time(
            sent_ns(dv.SourceTimestamp), sent_ns(dv.ServerTimestamp), receive, self._tolerance_ns
        )
        if verdict != TIME_OK:
            self._judge_clock(i, verdict, device, receive)
        status, variant = dv.StatusCode, dv.Value
        ts, value, quality, reason = value_parts(
            status.value if status is not None else 0, ts, variant.Value if variant is not None else None
        )
        if quality != GOOD:
            self._count(quality)
        return Reading(self.name, self._config.tags[i].name, ts, value, quality, self._units[i], reason)

    def _count(self, quality: Quality) -> None:
        self._stats["uncertain_values" if quality == UNCERTAIN else "bad_values"] += 1

    def _judge_clock(self, i: int, verdict: str, device_ns: int | None, receive: int) -> None:
        """What a value's timestamps that are not kept say (`judge_time`). A time far back that
        nothing contradicts is tag `i`'s value unchanged since then, not a wrong clock (servers
        that stamp a value at its last change send a constant's start-up time at every Read);
        unless that time moved since the tag was last seen and still lies further back than the
        tolerance before that sighting: a value that changed after the gateway saw the older one
        cannot have changed before it, the clock is behind."""
        if verdict == TIME_CLOCK:
            self._clock_off(device_ns, receive)
            return
        assert device_ns is not None
        last = self._unchanged.get(i)
        self._unchanged[i] = (device_ns, receive)
        if last is not None and device_ns != last[0] and device_ns < last[1] - self._tolerance_ns:
            self._clock_off(device_ns, receive)

    def _clock_off(self, device_ns: int | None, receive: int) -> None:
        """A value stamped on arrival although the device sent a time (wrong clock, before 1970)."""
        self._stats["clock_replaced"] += 1
        self._clock_offset_s = None if device_ns is None else round((device_ns - receive) / 1e9, 1)
        if not self._clock_warned:  # once per connection
            self._clock_warned = True
            log.warning("opcua.device_clock_off", driver=self.name, offset_s=self._clock_offset_s)

    def _count_fast(self) -> None:
        self.fast_publishes += 1

    def _subscription_gone(self, client: Client) -> None:
        """The server says the session has no subscription any more (it ended it: lifetime, reset)."""
        if client is self._client:
            self._lost("the server ended the subscription (BadNoSubscription)")

    def _push(self, batch: list[Reading]) -> None:
        if len(self._queue) >= MAX_QUEUED_BATCHES:
            self._queue.popleft()
            self._stats["dropped_batches"] += 1
        self._queue.append(batch)
        self._wakeup.set()

    def _lost(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
            log.warning("opcua.connection_lost", driver=self.name, reason=reason)
        self._connected = False
        self._queue.append(_LOST)
        self._wakeup.set()

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._unanswered = self._unanswered or isinstance(exc, TimeoutError)
        self._lost(f"connection lost: {explain(exc)}")


def _require(path: Path, key: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{key} file not found: {path}")
    return path


def _load_file(path: Path, key: str) -> x509.Certificate | None:
    """Check a certificate/key file is there and readable; the certificate itself is returned."""
    data = _require(path, key).read_bytes()
    if key != "certificate":
        return None
    try:
        return parse_certificate(data)
    except ValueError as exc:
        raise ValueError(f"{key} {path} is not a PEM or DER certificate: {exc}") from exc


def _certificate_uri(cert: x509.Certificate | None) -> str | None:
    if cert is None:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def _quiet_disconnect(client: Client, *, unanswered: bool = False) -> None:
    """Close a session that may already be dead without waiting long on it. The socket is closed
    whatever the server does: asyncua closes it only after CloseSession is answered, and a hung
    server's connection was otherwise left open (one more session on the PLC per hang).

    `unanswered`: the server has stopped answering. Its socket is closed first, so that asyncua's
    teardown finds the connection closed and sends nothing: a CloseSession to it timed out and
    asyncua logged that as an error with a traceback (`close_session raised during disconnect`),
    about a loss the driver had already reported; and with asyncua's own teardown under way, its
    `disconnect_socket` left the socket open."""
    client.connection_lost_callback = None  # its loss is ours, not news about the live session
    if unanswered:
        await _drop_socket(client)
    try:
        with contextlib.suppress(OSError, TimeoutError, UaError, asyncio.CancelledError, ConnectionError):
            async with asyncio.timeout(2.0):
                await client.disconnect()
    finally:
        with contextlib.suppress(OSError, UaError, ConnectionError):
            client.disconnect_socket()


async def _drop_socket(client: Client) -> None:
    """Close the client's TCP connection at once, whatever state asyncua's client is in, and let
    the protocol see it closed (asyncio reports a closed transport on the loop's next turn)."""
    protocol = client.uaclient.protocol  # asyncua 2.1: None once disconnected
    if protocol is None or protocol.is_closed:
        return
    protocol.disconnect_socket()
    for _ in range(3):  # connection_lost is a call_soon of transport.close(): one turn, or two
        if protocol.is_closed:
            return
        await asyncio.sleep(0)

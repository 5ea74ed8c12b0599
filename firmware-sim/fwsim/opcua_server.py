"""The pump station's OPC UA server (asyncua): every register-map point as a browsable variable.

Address space (namespace `NAMESPACE_URI`, index 2), one variable per point of `ctx.points`:

    Objects/PumpStation/<Group>/<Name>      NodeId ns=2;s=<point name>

`pump1.discharge_pressure` → `PumpStation/Pump1/DischargePressure`, `station.tank_level` →
`PumpStation/Station/TankLevel` (`browse_path()`): the part before the dot names the object,
the rest becomes CamelCase. Values are the engineering values a Modbus client reads after
scaling (float32 points as Float, integers clamped and rounded as in the registers, scaled
integers as Double). Each variable carries an `EngineeringUnits` property (EUInformation with
UNECE codes) when the point has a unit. Values are refreshed from the live model every
`UPDATE_S`; only changed values are written, so subscribers get one notification per change.

Security: None, and Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss, each Sign or
SignAndEncrypt, with a server certificate made at first
start in `<workdir>/opcua/pki/own/` (kept across restarts, so a client may pin it). Client
certificates: when `<workdir>/opcua/pki/trusted/` exists only the certificates in it are
accepted (others are refused with BadCertificateUntrusted and copied to `pki/rejected/`);
otherwise every time-valid certificate is accepted and recorded in `pki/accepted/`.

Options (`ctx.options`, or the environment for `edge-sim run`): `port` / EDGE_SIM_OPCUA_PORT
(default 4840, 0 picks a free port), `bench_tags` / EDGE_SIM_OPCUA_BENCH_TAGS (N Float variables
`PumpStation/Bench/bench_00000`.. reading i/2 + (second mod 100), for benchmarks),
`extra_namespaces` (N namespaces `urn:water-edge-agent:fwsim:other<i>` registered before the
station's, which then gets index 2 + N: a server that numbers its namespaces differently after a
restart or a project change, as real ones do), `max_nodes_per_read` and
`max_monitored_items_per_call` (a Read or a CreateMonitoredItems of more is answered
BadTooManyOperations, as embedded servers that take 50-500 at once do; default 0, no limit),
`advertise_limits` (default true: the limits are in Server/ServerCapabilities/OperationLimits;
false: enforced but not published, as some servers do).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.server.monitored_item_service import MonitoredItemService
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from water_edge.sim.component import Announcement, SimContext
from water_edge.sim.registers import Point, bench_value

NAMESPACE_URI: Final = "urn:water-edge-agent:fwsim:pumpstation"
APPLICATION_URI: Final = "urn:water-edge-agent:fwsim:opcua-server"
ROOT_OBJECT: Final = "PumpStation"
DEFAULT_PORT: Final = 4840
UPDATE_S: Final = 0.1

# UNECE Recommendation 20 common codes, as EUInformation.UnitId encodes them (OPC UA Part 8).
UNECE: Final[dict[str, tuple[str, str]]] = {
    "m3/h": ("MQH", "m³/h"),
    "bar": ("BAR", "bar"),
    "A": ("AMP", "A"),
    "mm/s": ("C16", "mm/s"),
    "degC": ("CEL", "°C"),
    "rpm": ("RPM", "r/min"),
    "m": ("MTR", "m"),
    "m3": ("MTQ", "m³"),
    "L": ("LTR", "l"),
    "L/h": ("E32", "l/h"),
    "s": ("SEC", "s"),
    "Wh": ("WHR", "W·h"),
    "V": ("VLT", "V"),
    "Hz": ("HTZ", "Hz"),
    "kW": ("KWT", "kW"),
    "%": ("P1", "%"),
}
UNECE_URI: Final = "http://www.opcfoundation.org/UA/units/un/cefact"

_INT_TYPES: Final[dict[str, tuple[ua.VariantType, str]]] = {
    "int16": (ua.VariantType.Int16, "h"),
    "uint16": (ua.VariantType.UInt16, "H"),
    "int32": (ua.VariantType.Int32, "i"),
    "uint32": (ua.VariantType.UInt32, "I"),
    "int64": (ua.VariantType.Int64, "q"),
    "uint64": (ua.VariantType.UInt64, "Q"),
}

log = logging.getLogger(__name__)


def _camel(part: str) -> str:
    return "".join(word[:1].upper() + word[1:] for word in re.split(r"[_\s]+", part) if word)


def browse_path(point_name: str) -> str:
    """The browse path below Objects of a point: `pump1.flow` → `PumpStation/Pump1/Flow`."""
    group, _, name = point_name.partition(".")
    if not name:
        return f"{ROOT_OBJECT}/{_camel(group)}"
    return f"{ROOT_OBJECT}/{_camel(group)}/{_camel(name.replace('.', '_'))}"


def node_id(point_name: str, ns: int = 2) -> str:
    """The NodeId string of a point's variable."""
    return f"ns={ns};s={point_name}"


def eu_information(unit: str) -> ua.EUInformation:
    """EUInformation for a register-map unit; UnitId -1 when UNECE has no code we know."""
    code, display = UNECE.get(unit, ("", unit))
    unit_id = -1
    if code:
        unit_id = 0
        for ch in code:  # OPC UA Part 8: the code's ASCII characters packed into an Int32
            unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=UNECE_URI,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(display),
        Description=ua.LocalizedText(unit),
    )


def opc_value(point: Point, raw: float | int | bool | str) -> tuple[Any, ua.VariantType]:  # noqa: PLR0911
    """The value a point shows over OPC UA: what a Modbus client reads after scaling."""
    enc = point.encoding
    if enc == "bool":
        return bool(raw), ua.VariantType.Boolean
    if enc == "string":
        return str(raw)[: point.length * 2], ua.VariantType.String
    if isinstance(raw, str):
        raise TypeError(f"{point.name}: {enc} needs a number, got {raw!r}")
    if enc == "float32":
        return float(raw), ua.VariantType.Float
    if enc == "float64":
        return float(raw), ua.VariantType.Double
    variant, code = _INT_TYPES[enc]
    if isinstance(raw, float) and not math.isfinite(raw):
        return raw, ua.VariantType.Double
    bits = struct.calcsize(code) * 8
    lo, hi = (0, (1 << bits) - 1) if code.isupper() else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    number = max(lo, min(hi, round(raw / point.scale)))
    if point.scale != 1.0:
        # The engineering value a PLC shows (raw 199 in tenths is 19.9), not the binary product
        # 19.900000000000002: the same figure the agent's Modbus driver reads from the register.
        return float(Decimal(number) * Decimal(repr(point.scale))), ua.VariantType.Double
    return number, variant


@dataclass
class _Var:
    point: Point | None
    node: ua.NodeId
    variant: ua.VariantType
    last: Any = None
    last_status: int = -1
    retyped: bool = False  # served as `variant` (Float/Double) instead of the point's own type


class OpcUaComponent:
    """`edge-sim run`'s OPC UA server; `stop()` then `start()` again reuses port and certificate."""

    name = "opcua"

    def __init__(self) -> None:
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._ctx: SimContext | None = None
        self._vars: list[_Var] = []
        self._overrides: dict[str, int] = {}
        self._served: dict[str, Any] = {}
        self._refuse_subscriptions = False
        self._hold_publishes = False
        self._retyped: dict[str, ua.VariantType] = {}
        self._clock: tuple[float | None, float | None] = (0.0, 0.0)
        self.port: int | None = None
        self.url = ""
        self.pki: Path | None = None

    async def start(self, ctx: SimContext) -> list[Announcement]:
        self._ctx = ctx
        opts = ctx.options
        port = int(opts.get("port", os.environ.get("EDGE_SIM_OPCUA_PORT", str(DEFAULT_PORT))))
        if self.port is not None:
            port = self.port  # a restart keeps the port it had
        bench = int(opts.get("bench_tags", os.environ.get("EDGE_SIM_OPCUA_BENCH_TAGS", "0")))
        extra_namespaces = int(opts.get("extra_namespaces", 0))
        if port == 0:
            port = _free_port(ctx.host)
        self.pki = ctx.workdir / "opcua" / "pki"
        cert_path, key_path = _ensure_server_certificate(self.pki / "own", ctx.host)

        server = Server()
        await server.init()
        url = f"opc.tcp://{ctx.host}:{port}"
        server.set_endpoint(url)
        server.set_server_name("water-edge-agent firmware-sim pump station")
        await server.set_application_uri(APPLICATION_URI)
        await server.load_certificate(str(cert_path))
        await server.load_private_key(str(key_path))
        server.set_security_policy([
            ua.SecurityPolicyType.NoSecurity,
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
            ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
        ])  # fmt: skip
        server.set_certificate_validator(self._validate_client)
        service = server.iserver.subscription_service
        create = service.create_subscription

        async def create_subscription(*args: Any, **kwargs: Any) -> ua.CreateSubscriptionResult:
            if self._refuse_subscriptions:
                raise ServiceError(StatusCodes.BadServiceUnsupported)
            result: ua.CreateSubscriptionResult = await create(*args, **kwargs)
            self._holdable(service.subscriptions[result.SubscriptionId])
            return result

        service.create_subscription = create_subscription  # type: ignore[method-assign]
        await _limit_operations(server, opts)
        for i in range(extra_namespaces):
            await server.register_namespace(f"urn:water-edge-agent:fwsim:other{i}")
        ns = await server.register_namespace(NAMESPACE_URI)
        self._vars = await _build_address_space(server, ns, ctx.points, bench, self._retyped)
        await self._update(server)
        # asyncua logs a bind failure with its traceback; the OSError below says it in one line
        server_log = logging.getLogger("asyncua.server.server")
        level = server_log.level
        server_log.setLevel(logging.CRITICAL)
        try:
            await server.start()
        except OSError as exc:
            raise OSError(f"OPC UA server cannot listen on {ctx.host}:{port}: {exc.strerror or exc}") from exc
        finally:
            server_log.setLevel(level)
        self._server = server
        self.port, self.url = port, url
        self._task = asyncio.create_task(self._run(server), name="opcua-update")
        log.info("opcua server on %s (%d variables)", url, len(self._vars))
        return [
            Announcement(
                "opcua", {"url": url, "namespace": NAMESPACE_URI, "server_certificate": str(cert_path)}
            )
        ]

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    def override(self, point_name: str, status: str | None) -> None:
        """Fault injection: serve `point_name` with status code `status` (e.g. "BadSensorFailure",
        "UncertainLastUsableValue"), or with its live status again when `status` is None."""
        if status is None:
            self._overrides.pop(point_name, None)
        else:
            self._overrides[point_name] = getattr(StatusCodes, status)

    def serve(self, point_name: str, value: Any) -> None:
        """Fault injection: serve `point_name` with `value` (in the point's own Variant type: a
        string that is not UTF-8, given with surrogate escapes, a NaN...), or with its live value
        again when `value` is None."""
        if value is None:
            self._served.pop(point_name, None)
        else:
            self._served[point_name] = value

    def refuse_subscriptions(self, refuse: bool = True) -> None:
        """Fault injection: answer CreateSubscription with BadServiceUnsupported, as some small
        PLC servers do (clients must fall back to polling)."""
        self._refuse_subscriptions = refuse

    def hold_publishes(self, hold: bool = True) -> None:
        """Fault injection: the subscriptions stop publishing — no data, no keep-alive — while the
        session, the TCP connection and every other service (Read, Browse) carry on: a server whose
        publish engine hangs. The publish requests the client sends are kept unanswered."""
        self._hold_publishes = hold

    async def end_subscriptions(self, status: str | None = None) -> int:
        """Fault injection: the server ends every subscription while the sessions stay, as one does
        whose subscription lifetime ran out or that reset its subscriptions (a project download).
        With `status` (e.g. "BadTimeout") each subscription first publishes a StatusChangeNotification
        with it; without, it just goes. The publish requests the server still holds are then answered
        with BadNoSubscription (as open62541 does; asyncua's server would keep them forever).
        Returns how many subscriptions ended."""
        assert self._server is not None
        service = self._server.iserver.subscription_service
        subs = list(service.subscriptions.values())
        if status is not None:
            code = ua.StatusCode(getattr(StatusCodes, status))
            for sub in subs:
                sub._triggered_statuschanges.append(code)
                sub._startup = True  # publish now, not at the next keep-alive
                await sub.publish_results()
            # sent with the next publish request, if none was waiting at the server
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    while any(sub._triggered_statuschanges for sub in subs):  # noqa: ASYNC110 - no event to wait on
                        await asyncio.sleep(0.01)
        await service.delete_subscriptions([sub.data.SubscriptionId for sub in subs])
        fault = ua.ServiceFault()
        fault.ResponseHeader.ServiceResult = ua.StatusCode(ua.UInt32(StatusCodes.BadNoSubscription))
        bserver = self._server.bserver
        for protocol in bserver.clients if bserver is not None else []:
            processor = protocol.processor
            while processor is not None and processor._publish_requests:
                request = processor._publish_requests.popleft()
                processor.send_response(request.requesthdr.RequestHandle, request.seqhdr, fault)  # type: ignore[no-untyped-call]
        return len(subs)

    async def delete_point(self, point_name: str) -> None:
        """Fault injection: delete a point's variable while clients monitor it, as a project download
        that removed the tag does. Its monitored items get a data change with BadNodeIdUnknown, as
        open62541 and PLC servers report it (asyncua's server would report nothing). The point comes
        back at the next `start()`."""
        assert self._server is not None
        var = next(v for v in self._vars if v.point is not None and v.point.name == point_name)
        self._vars.remove(var)
        aspace = self._server.iserver.aspace
        stamp = cast(ua.DateTime, dt.datetime.now(dt.UTC))
        gone = ua.DataValue(
            StatusCode=ua.StatusCode(ua.UInt32(StatusCodes.BadNodeIdUnknown)),
            SourceTimestamp=stamp,
            ServerTimestamp=stamp,
        )
        callbacks = aspace[var.node].attributes[AttributeIds.Value].datachange_callbacks
        for handle, callback in list(callbacks.items()):
            await callback(handle, gone)
            aspace.delete_datachange_callback(handle)
        await self._server.delete_nodes([self._server.get_node(var.node)], recursive=True)

    def retype(self, point_name: str, variant: str | None = "Float") -> None:
        """Fault injection: from the next `start()` on, serve a point as `variant` ("Float" or
        "Double") instead of its own type — a PLC whose tag changed from INT to REAL with a project
        download; None serves its own type again."""
        if variant is None:
            self._retyped.pop(point_name, None)
        else:
            self._retyped[point_name] = getattr(ua.VariantType, variant)

    def clock(self, source_offset_s: float | None = 0.0, server_offset_s: float | None = 0.0) -> None:
        """Fault injection: stamp the values written from now on with a clock that is off by these
        many seconds (source and server timestamp each), or without that timestamp when None — a PLC
        whose clock is years off, or was reset to 1970."""
        self._clock = (source_offset_s, server_offset_s)

    def _holdable(self, sub: Any) -> None:
        """Make a new subscription obey `hold_publishes`."""
        publish = sub.publish_results

        async def publish_results(requestdata: Any = None) -> bool:
            if self._hold_publishes:
                return False
            return bool(await publish(requestdata))

        sub.publish_results = publish_results

    async def _run(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += UPDATE_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await self._update(server)

    async def _update(self, server: Server) -> None:
        """Write every point whose value or status changed, all from one model state."""
        assert self._ctx is not None
        state = self._ctx.state()
        now = dt.datetime.now(dt.UTC)
        source, server_ts = (
            None if offset is None else cast(ua.DateTime, now + dt.timedelta(seconds=offset))
            for offset in self._clock
        )
        second = int(state.elapsed_s)
        for var in self._vars:
            status = StatusCodes.Good
            if var.point is None:  # a bench variable: its index is in its NodeId
                value: Any = bench_value(int(str(var.node.Identifier)[6:]), second)
            else:
                try:
                    value, _ = opc_value(var.point, var.point.value(state))  # through sensor faults
                except (ArithmeticError, TypeError, ValueError, IndexError):
                    value, status = None, StatusCodes.BadSensorFailure
                if isinstance(value, float) and not math.isfinite(value):
                    value, status = None, StatusCodes.BadSensorFailure
                status = self._overrides.get(var.point.name, status)
                value = self._served.get(var.point.name, value)
                if var.retyped and isinstance(value, int | float):
                    value = float(value)
            if value == var.last and status == var.last_status:
                continue
            var.last, var.last_status = value, status
            variant = ua.Variant(value, var.variant if value is not None else ua.VariantType.Null)
            code = ua.StatusCode(ua.UInt32(status))
            datavalue = ua.DataValue(variant, code, SourceTimestamp=source, ServerTimestamp=server_ts)
            await server.write_attribute_value(var.node, datavalue)

    async def _validate_client(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        assert self.pki is not None
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ServiceError(StatusCodes.BadCertificateTimeInvalid)
        der = cert.public_bytes(serialization.Encoding.DER)
        thumb = hashlib.sha256(der).hexdigest()
        trusted_dir = self.pki / "trusted"
        if trusted_dir.is_dir():
            if thumb in _thumbprints(trusted_dir):
                return
            rejected = self.pki / "rejected"
            rejected.mkdir(parents=True, exist_ok=True)
            (rejected / f"{thumb[:16]}.der").write_bytes(der)
            log.warning("opcua client certificate refused (not in %s): sha256 %s", trusted_dir, thumb)
            raise ServiceError(StatusCodes.BadCertificateUntrusted)
        accepted = self.pki / "accepted"
        accepted.mkdir(parents=True, exist_ok=True)
        (accepted / f"{thumb[:16]}.der").write_bytes(der)


async def _limit_operations(server: Server, opts: dict[str, Any]) -> None:
    """Refuse a Read of more than `max_nodes_per_read` nodes and a CreateMonitoredItems of more
    than `max_monitored_items_per_call` items (0: no limit) as a whole, with BadTooManyOperations
    (Part 4, 5.10.2); publish the limits unless `advertise_limits` is false."""
    max_read = int(opts.get("max_nodes_per_read", 0))
    max_monitored = int(opts.get("max_monitored_items_per_call", 0))
    attributes = server.iserver.attribute_service
    subscriptions = server.iserver.subscription_service
    read, create = attributes.read, subscriptions.create_monitored_items

    def limited_read(params: ua.ReadParameters) -> list[ua.DataValue]:
        if max_read and len(params.NodesToRead) > max_read:
            raise ServiceError(StatusCodes.BadTooManyOperations)
        return read(params)

    async def limited_create(params: ua.CreateMonitoredItemsParameters) -> list[ua.MonitoredItemCreateResult]:
        if max_monitored and len(params.ItemsToCreate) > max_monitored:
            raise ServiceError(StatusCodes.BadTooManyOperations)
        return await create(params)

    attributes.read = limited_read  # type: ignore[method-assign]
    subscriptions.create_monitored_items = limited_create  # type: ignore[method-assign]
    if not opts.get("advertise_limits", True):
        return
    # MaxNodesPerRead, MaxMonitoredItemsPerCall, where clients look for them (0 reads as "no limit")
    for node_id, limit in (("i=11705", max_read), ("i=11714", max_monitored)):
        node = server.get_node(ua.NodeId.from_string(node_id))
        await node.write_value(ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32)))


async def _build_address_space(
    server: Server, ns: int, points: Sequence[Point], bench: int, retyped: dict[str, ua.VariantType]
) -> list[_Var]:
    objects = server.nodes.objects
    root = await objects.add_object(f"ns={ns};s={ROOT_OBJECT}", ua.QualifiedName(ROOT_OBJECT, ns))
    groups: dict[str, Any] = {}
    out: list[_Var] = []
    for point in points:
        parts = browse_path(point.name).split("/")[1:]
        group_name, leaf = parts[0], parts[-1]
        if group_name not in groups:
            groups[group_name] = await root.add_object(
                f"ns={ns};s={ROOT_OBJECT}.{group_name}", ua.QualifiedName(group_name, ns)
            )
        value, variant = opc_value(point, _initial(point))
        if point.name in retyped:
            value, variant = float(value), retyped[point.name]
        var = await groups[group_name].add_variable(
            f"ns={ns};s={point.name}", ua.QualifiedName(leaf, ns), ua.Variant(value, variant)
        )
        await var.write_attribute(
            AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(point.description)))
        )
        if point.unit:
            await var.add_property(
                f"ns={ns};s={point.name}.EngineeringUnits",
                ua.QualifiedName("EngineeringUnits", 0),
                ua.Variant(eu_information(point.unit), ua.VariantType.ExtensionObject),
                datatype=ua.NodeId.from_string("i=887"),  # EUInformation
            )
        out.append(_Var(point, var.nodeid, variant, retyped=point.name in retyped))
    if bench:
        folder = await root.add_object(f"ns={ns};s={ROOT_OBJECT}.Bench", ua.QualifiedName("Bench", ns))
        for i in range(bench):
            name = f"bench_{i:05d}"
            var = await folder.add_variable(
                f"ns={ns};s={name}", ua.QualifiedName(name, ns), ua.Variant(0.0, ua.VariantType.Float)
            )
            out.append(_Var(None, var.nodeid, ua.VariantType.Float))
    return out


async def _datachange_callback(
    self: MonitoredItemService, handle: int, value: ua.DataValue, error: ua.StatusCode | None = None
) -> None:
    """asyncua 2.1's MonitoredItemService.datachange_callback, comparing each sample with the
    last *reported* value (OPC UA Part 4 §7.22.2) instead of the previous sample: otherwise a
    value that ramps in steps smaller than the deadband is never reported at all."""
    if error:
        await self.trigger_statuschange(error)
        return
    mid = self._monitored_datachange[handle]
    mdata = self._monitored_items[mid]
    if mdata.mode == ua.MonitoringMode.Disabled:
        return
    mdata.mvalue.set_current_datavalue(value)
    trigger = mdata.filter.Trigger if mdata.filter else ua.DataChangeTrigger.StatusValue
    report = self._is_data_changed(mdata.mvalue, trigger)
    if report and mdata.filter:
        report = self._is_deadband_exceeded(mdata.mvalue, mdata.filter)
    if not report:
        mdata.mvalue.current_dvalue = mdata.mvalue.old_dvalue
        return
    event = ua.MonitoredItemNotification()
    event.ClientHandle = mdata.client_handle
    event.Value = value
    await self.isub.enqueue_datachange_event(mid, event, mdata.queue_size)


MonitoredItemService.datachange_callback = _datachange_callback  # type: ignore[method-assign]


def _initial(point: Point) -> float | int | bool | str:
    if point.encoding == "string":
        return ""
    return False if point.encoding == "bool" else 0


def _thumbprints(directory: Path) -> set[str]:
    out = set()
    for path in directory.iterdir():
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            cert = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data)
            )
        except ValueError:
            log.warning("not a certificate, ignored: %s", path)
            continue
        out.add(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest())
    return out


def _ensure_server_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """The server's certificate and key (DER, PEM), made once with `cryptography` and kept."""
    cert_path, key_path = directory / "server_cert.der", directory / "server_key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(APPLICATION_URI),
        x509.DNSName(socket.gethostname()),
        x509.DNSName("localhost"),
    ]
    with contextlib.suppress(ValueError):
        import ipaddress

        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "fwsim OPC UA server",
        {"organizationName": "water-edge-agent"},
        names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=3650,
    )
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_path, key_path


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

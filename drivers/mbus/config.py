"""The `[[devices]]` schema of an M-Bus bus (one serial port, several meters); validated without I/O."""

from __future__ import annotations

from typing import Annotated, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from water_edge.core.names import NAME_PATTERN
from water_edge.core.patterns import explained
from water_edge.core.secrets import SecretRef
from water_edge.drivers.base import DeviceConfig

QUANTITY_PATTERN: Final = explained(r"^[a-z_]+$", "a quantity in lower case, such as volume or volume_flow")
SECONDARY_PATTERN: Final = explained(
    r"^[0-9A-Fa-f]{8}([0-9A-Fa-f]{8})?$",
    "the 8-digit ID printed on the meter, optionally followed by 8 hex digits for manufacturer, "
    "version and medium (F = any)",
)

Function = Literal["instantaneous", "maximum", "minimum", "error"]
FUNCTION_SUFFIX: Final = {"instantaneous": "", "maximum": ".max", "minimum": ".min", "error": ".error"}
# The tags after `<meter>.` the driver gives every meter, whatever its records.
BUILT_IN_TAGS: Final = frozenset({"status"})


def _key_form(value: str | SecretRef | None) -> str | SecretRef | None:
    if isinstance(value, str):
        digits = "".join(ch for ch in value if not ch.isspace() and ch not in ":-")
        if len(digits) != 32 or any(ch not in "0123456789abcdefABCDEF" for ch in digits):
            raise ValueError("a meter key is 32 hex digits (AES-128), or { file = ... } / { env = ... }")
    return value


# A meter's AES-128 key: 32 hex digits, or better a secret reference ({ file = ... } / { env = ... }),
# read when the driver opens (`keys.load_key`).
MeterKey = Annotated[str | SecretRef | None, AfterValidator(_key_form)]


class RecordSelector(BaseModel):
    """Which record of a meter's telegram(s) becomes a tag: by quantity, storage, tariff, ..."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantity: str = Field(pattern=QUANTITY_PATTERN, max_length=64)
    storage: int = Field(default=0, ge=0)
    tariff: int = Field(default=0, ge=0)
    subunit: int = Field(default=0, ge=0)
    function: Function = "instantaneous"
    # Tag name after "<meter>."; defaults to the documented scheme (docs/drivers/mbus.md).
    tag: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=64)

    @property
    def tag_name(self) -> str:
        """The tag after `<meter>.`: `tag`, or the scheme's `<quantity>[.max][.storage<N>]...`."""
        if self.tag:
            return self.tag
        name = self.quantity + FUNCTION_SUFFIX[self.function]
        for label, value in (("storage", self.storage), ("tariff", self.tariff), ("subunit", self.subunit)):
            if value:
                name += f".{label}{value}"
        return name


def record_tag_problem(meter: str, records: list[RecordSelector], built_in: frozenset[str]) -> str | None:
    """Why a meter's selected records cannot each be a tag of their own: two that get one name (its
    readings would alternate between two values and units in one series), or one named like a tag
    the driver gives every meter."""
    first: dict[str, int] = {}
    for index, record in enumerate(records):
        tag = record.tag_name
        if tag in built_in:
            return (
                f"meter {meter!r}: records[{index}] makes tag {meter}.{tag}, which the driver gives every "
                f"meter; give it another 'tag'"
            )
        if tag in first:
            return (
                f"meter {meter!r}: records[{first[tag]}] and records[{index}] both make tag {meter}.{tag}; "
                "give one of them another 'tag'"
            )
        first[tag] = index
    return None


def _one_meter(a: str, b: str) -> bool:
    """Whether two secondary addresses name one meter: one ID of 8 digits, and a manufacturer,
    version and medium that are alike or any (all F). An ID with a wildcard digit selects whichever
    meter answers, so it is not judged here."""
    a, b = a.upper().ljust(16, "F"), b.upper().ljust(16, "F")
    if a[:8] != b[:8] or "F" in a[:8]:
        return False
    fields = ((8, 12), (12, 14), (14, 16))
    return all(a[i:j] == b[i:j] or "F" * (j - i) in (a[i:j], b[i:j]) for i, j in fields)


class MbusMeter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    address: int | None = Field(default=None, ge=0, le=250)
    # 8 ID digits as printed on the meter, optionally + manufacturer, version, medium (16 hex).
    secondary: str | None = Field(default=None, pattern=SECONDARY_PATTERN)
    records: Literal["all"] | list[RecordSelector] = "all"
    max_telegrams: int = Field(default=8, ge=1, le=64)
    # For a meter that encrypts its data (OMS security mode 5 or 7).
    key: MeterKey = None
    # The meter's own line speed on a segment of mixed speeds (old meters at 300 Bd beside new ones
    # at 2400); the master switches to it for this meter. None: the device's `baudrate`.
    baudrate: Literal[300, 2400, 9600] | None = None

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.address is None) == (self.secondary is None):
            raise ValueError(
                f"meter {self.name!r}: give exactly one of 'address' (primary, 0..250) or "
                "'secondary' (8 ID digits, optionally + 8 hex digits)"
            )
        if self.records != "all":
            problem = record_tag_problem(self.name, self.records, BUILT_IN_TAGS)
            if problem is not None:
                raise ValueError(problem)
        return self


class MbusConfig(DeviceConfig):
    """An M-Bus master on one serial port (a level converter such as a USB M-Bus master)."""

    kind: Literal["mbus"]
    port: str = Field(min_length=1, max_length=255)
    baudrate: Literal[300, 2400, 9600] = 2400
    # Per attempt; default from the standard: 330 bit times + 50 ms (187.5 ms at 2400 Bd).
    timeout_ms: int | None = Field(default=None, ge=10, le=60_000)
    retries: int = Field(default=2, ge=0, le=5)
    # The master's adapter hands every request back before the answer (a 2-wire converter that
    # hears itself): the link strips that echo.
    local_echo: bool = False
    meters: list[MbusMeter] = Field(min_length=1)

    def endpoint_text(self) -> str:
        return f"{self.port} {self.baudrate} Bd"

    def serial_line(self) -> tuple[str, str]:
        return self.port, f"M-Bus {self.baudrate} Bd" + (", local echo" if self.local_echo else "")

    def point_count(self) -> int:
        return len(self.meters)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [m.name for m in self.meters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate meter names: {', '.join(dupes)}")
        addresses = [m.address for m in self.meters if m.address is not None]
        twice = sorted({a for a in addresses if addresses.count(a) > 1})
        if twice:
            raise ValueError(f"two meters share primary address {twice[0]}: they would collide on the bus")
        chosen = [(m.name, m.secondary) for m in self.meters if m.secondary is not None]
        for later, (name, secondary) in enumerate(chosen):
            for first, first_secondary in chosen[:later]:
                if _one_meter(first_secondary, secondary):
                    raise ValueError(
                        f"meters {first!r} ({first_secondary}) and {name!r} ({secondary}) select the same "
                        "meter by secondary address: it would be read twice, under two names"
                    )
        return self

    def meter_records(self) -> dict[str, frozenset[str] | None]:
        """The tags after `<meter>.` each meter's selected records make; None for `"all"` (known
        once read)."""
        return {
            m.name: None if m.records == "all" else frozenset(r.tag_name for r in m.records)
            for m in self.meters
        }

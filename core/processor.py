"""The processor vocabulary: what an analytics processor (leak, pump anomaly) is, what it reads, what
its factory may use, and the optional capabilities the agent finds with `isinstance`.

A processor kind registers through the `edge_agent.processors` entry points, like a driver: the
entry point names a `ProcessorFactory`, whose `config_model` validates each `[[models.<kind>]]`
table on its own (no I/O, so `edge-agent check-config` never loads a model); `from_config` binds
the validated tables and a `ProcessorContext`, and `processors()` builds what runs.

Optional capabilities, each a `runtime_checkable` protocol:
- `WantsStreams` (processor): the readings streams it needs; an empty set means no feed at all;
- `HasModelSlot` (processor): a model that `model_update` commands swap while it runs;
- `Calibratable` (processor or factory): a signed calibration command it carries out;
- `ChecksSections` (factory): config checks across its tables or against the devices;
- `WarnsSections` (factory): what is valid but deserves a warning (a deprecated key);
- `WindowSource` (driver, re-exported by `drivers.base`): audio analysis windows, defined here
  because a processor that consumes them may not import `drivers`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

from pydantic import BaseModel

from water_edge.core.errors import AgentError
from water_edge.core.health import Health
from water_edge.core.reading import Event, Reading

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

EventSink = Callable[[Event], Awaitable[None]]


class CalibrationFailedError(AgentError):
    """A calibration command was valid but could not be carried out; the message says why (the
    command handler answers it as a failed `command_result`)."""


# -- what a processor reads and emits -------------------------------------------------------------


class ReadingSource(Protocol):
    """A processor's feed (the agent's `ReadingFeed`): `(stream, readings)` batches in submit order."""

    async def get(self) -> tuple[str, list[Reading]]:
        """The oldest batch, waiting for one."""
        ...

    def __aiter__(self) -> AsyncIterator[tuple[str, list[Reading]]]: ...


class Processor(Protocol):
    """An analytics processor: reads its source until cancelled, emits events through `emit`."""

    name: str

    async def run(self, source: ReadingSource, emit: EventSink) -> None: ...

    def health(self) -> Health: ...


# -- how a processor kind is built ----------------------------------------------------------------


@dataclass(frozen=True)
class ProcessorContext:
    """What a factory may use besides its own config tables."""

    state_dir: Path  # the gateway's state directory (calibrations, histories, ...)
    drivers: Mapping[str, object] = field(default_factory=dict)  # the built (enabled) drivers by name
    # The stream each enabled device's readings are submitted to, by device name (what a processor
    # that takes only some devices' readings names in its `streams`).
    streams: Mapping[str, str] = field(default_factory=dict)
    # The tags each enabled device's readings carry, by device name; None when they are known only
    # once read (a meter's records). Missing for a device: not known, as None.
    tags: Mapping[str, frozenset[str] | None] = field(default_factory=dict)

    def streams_for(self, references: Iterable[str]) -> frozenset[str]:
        """The streams readings of `references` (`"tag"` or `"device/tag"`, as a processor's config
        names them) can come in: the named device's, or for a bare tag every device that reads it
        or whose tags are known only once read. A processor that names these as its `streams` is
        not handed every other device's readings (5,000 tags of another PLC queued through a pump
        model's feed, waiting while it calibrated)."""
        found: set[str] = set()
        for reference in references:
            device, slash, _ = reference.partition("/")
            if slash:
                if device in self.streams:
                    found.add(self.streams[device])
                continue
            for name, stream in self.streams.items():
                known = self.tags.get(name)
                if known is None or reference in known:
                    found.add(stream)
        return frozenset(found)


@dataclass(frozen=True)
class ConfigProblem:
    """A config mistake a factory finds across its tables: `where` continues the key path after
    `models.<kind>` (e.g. `(0, "device")`), `message` says what was expected."""

    where: tuple[int | str, ...]
    message: str


def names_used_twice(names: Sequence[str], what: str) -> list[ConfigProblem]:
    """One problem per name that two tables share, in name order: a processor's name is its state
    directory and its events' source, so two tables of one name would overwrite each other."""
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    return [ConfigProblem((), f"{what} name {name!r} is used twice") for name in twice]


class ProcessorFactory(Protocol):
    """What an `edge_agent.processors` entry point names: the class of one processor kind."""

    # One `[[models.<kind>]]` table; validating it must do no I/O.
    config_model: ClassVar[type[BaseModel]]

    @classmethod
    def from_config(cls, sections: Sequence[Any], context: ProcessorContext) -> Self:
        """Bind the kind's validated tables (instances of `config_model`, in file order); no I/O."""
        ...

    def processors(self) -> list[Processor]:
        """The processors to run (this may load models)."""
        ...


@runtime_checkable
class ChecksSections(Protocol):
    """A factory capability: checks that span the kind's tables or need the configured devices
    (unique names, a table naming a device of the right kind); run by the config loader."""

    @classmethod
    def check_sections(cls, sections: Sequence[Any], devices: Mapping[str, str]) -> list[ConfigProblem]:
        """Problems with `sections`; `devices` maps every configured device name to its kind."""
        ...


@runtime_checkable
class ChecksDevices(Protocol):
    """A factory capability: checks of its tables against what the devices they name are configured
    with (an audio device's channel names, a meter bus's meters); run by the config loader once every
    device is valid. A factory reads a device config by the shape it needs (a `Protocol` of its own):
    `models` imports no driver."""

    @classmethod
    def check_devices(cls, sections: Sequence[Any], devices: Mapping[str, object]) -> list[ConfigProblem]:
        """Problems with `sections`; `devices` maps every device name to its validated config."""
        ...


@runtime_checkable
class ReadsTags(Protocol):
    """A factory capability: the tags its tables name (`"tag"` or `"device/tag"`), so that the config
    loader can check each against the devices' tags: a bare tag two devices read would feed one
    signal from both, a misspelt one would never arrive."""

    @classmethod
    def tag_references(cls, sections: Sequence[Any]) -> list[tuple[tuple[int | str, ...], str]]:
        """`(where, reference)` per tag named; `where` continues after `models.<kind>`."""
        ...


@runtime_checkable
class WarnsSections(Protocol):
    """A factory capability: what is accepted but deserves a warning (a deprecated key, and what
    replaced it); the config loader collects them, `check-config` prints them, the agent logs them."""

    @classmethod
    def section_warnings(cls, sections: Sequence[Any]) -> list[ConfigProblem]:
        """Warnings about valid `sections` (`where` continues after `models.<kind>`)."""
        ...


# -- optional capabilities ------------------------------------------------------------------------


@runtime_checkable
class WantsStreams(Protocol):
    """A processor that reads only these streams; an empty set means it takes no readings feed."""

    @property
    def streams(self) -> frozenset[str]: ...


@runtime_checkable
class SwapOutcome(Protocol):
    """What a model slot's swap reports (`models.runtime.SwapResult`)."""

    @property
    def ok(self) -> bool: ...

    @property
    def version(self) -> str | None: ...

    @property
    def reason(self) -> str | None: ...


class ModelSlotLike(Protocol):
    """`models.runtime.ModelSlot`: verifies the manifest's sha256 and self-tests before swapping.

    `swap` returns (or, when async, resolves to) a `SwapOutcome`, or a dict of what it did."""

    def swap(self, manifest_path: Path) -> Any: ...

    @property
    def fingerprint(self) -> str | None:
        """The model in service as "<name> <version> <sha256>" (None: none loaded)."""
        ...


@runtime_checkable
class HasModelSlot(Protocol):
    """A processor whose model `model_update` commands swap while it runs."""

    @property
    def name(self) -> str: ...

    @property
    def slot(self) -> ModelSlotLike: ...


@runtime_checkable
class Calibratable(Protocol):
    """A processor or factory that carries out a signed calibration command.

    `calibration_command` is the command type (e.g. `pump_calibration`), `calibration_target` the
    command argument naming what to calibrate (e.g. `pump`). `calibrate` raises
    `CalibrationFailedError` when it cannot, and returns what it did."""

    calibration_command: str
    calibration_target: str

    async def calibrate(self, target_name: str, args: Mapping[str, Any]) -> dict[str, Any]: ...


class AudioWindowLike(Protocol):
    """An audio analysis window (the audio driver's `AudioWindow`), by shape only."""

    @property
    def start_ts_ns(self) -> int: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def samples(self) -> npt.NDArray[np.float32]: ...
    @property
    def channel_names(self) -> Sequence[str]: ...


@runtime_checkable
class WindowSource(Protocol):
    """A driver capability: analysis windows pushed to listeners on the event loop (see
    `drivers.audio.driver` for the contract); the returned function removes the listener."""

    def add_window_listener(self, callback: Callable[[AudioWindowLike], None]) -> Callable[[], None]: ...

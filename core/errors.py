"""The project's exception tree; library exceptions are translated into it where they are caught.

AgentError
├── ConfigError          a config file is missing, unreadable or invalid
├── DriverError
│   ├── DriverIOError    the device could not be reached (timeout, refused, closed)
│   └── DeviceError      the device answered with an error (e.g. a Modbus exception)
├── BufferError          the outbox database cannot be opened or written
└── UplinkError          the broker connection cannot be configured or used
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(AgentError):
    """A configuration problem; the message names the file, the key and what was expected."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class DriverError(AgentError):
    """A driver could not produce a good reading."""


class DriverIOError(DriverError):
    """The device could not be reached: timeout, connection refused or dropped."""


class DeviceError(DriverError):
    """The device answered, with an error (e.g. a Modbus exception code)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class BufferError(AgentError):
    """The outbox database cannot be opened or written."""


class QuotaExceededError(BufferError):
    """An append larger than the outbox's whole quota: it never fits, however much is evicted."""


class UplinkError(AgentError):
    """The broker connection cannot be configured or used."""

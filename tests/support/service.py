"""A server the tests start and stop as a context manager: a start that fails part-way cleans up
what it had started (processes, temporary folders) before the error reaches the test."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartedService:
    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

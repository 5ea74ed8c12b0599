"""An in-memory outbox with the uplink's lease/ack interface, for tests without SQLite.

It keeps the real outbox's contract (ids ascending, per-stream `seq` +1 per row, rows removed
only by `ack`) but nothing survives the process: never use it on a gateway.
"""

from __future__ import annotations

from collections.abc import Sequence

from water_edge.buffer.codec import encode_events, encode_readings
from water_edge.buffer.types import Batch, OutboxRow
from water_edge.core.errors import BufferError
from water_edge.core.reading import now_ns


class MemoryOutbox:
    """Rows in a dict; `lease`/`ack`/`append` behave like `buffer.async_outbox.AsyncOutbox`."""

    def __init__(self) -> None:
        self._rows: dict[int, OutboxRow] = {}
        self._next_id = 1
        self._seq: dict[str, int] = {}
        self.ack_calls = 0
        self.fail_acks = False

    def append_sync(self, batches: Sequence[Batch]) -> list[int]:
        ids = []
        for batch in batches:
            if batch.events is not None:
                body, count = encode_events(batch.events), len(batch.events)
            else:
                readings = batch.readings or []
                body, count = encode_readings(readings), len(readings)
            seq = self._seq.get(batch.stream, 0) + 1
            self._seq[batch.stream] = seq
            row = OutboxRow(self._next_id, batch.stream, seq, batch.row_class, now_ns(), count, body)
            self._rows[row.id] = row
            ids.append(row.id)
            self._next_id += 1
        return ids

    async def append(self, batches: Sequence[Batch]) -> list[int]:
        return self.append_sync(batches)

    async def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        out = []
        for row_id in sorted(self._rows):
            if row_id > after_id and (upto_id is None or row_id <= upto_id):
                out.append(self._rows[row_id])
                if len(out) >= limit:
                    break
        return out

    async def last_id(self) -> int:
        return self._next_id - 1

    async def ack(self, row_ids: Sequence[int]) -> None:
        self.ack_calls += 1
        if self.fail_acks:
            raise BufferError("injected ack failure")
        for row_id in row_ids:
            self._rows.pop(row_id, None)

    def pending(self) -> int:
        """Rows not yet acknowledged."""
        return len(self._rows)

    def row_ids(self) -> list[int]:
        return sorted(self._rows)

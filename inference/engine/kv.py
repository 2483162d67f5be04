"""KV rows of the requests holding a slot: how big, when to grow, and freed memory.

Each admitted request holds its own KV row (inference.model.decoder.KVRow),
sized to its tokens and grown alone: a long prompt in one row costs the other
rows nothing, and a finished row's memory is freed and handed back to the
operating system.
"""

from __future__ import annotations

from inference.model.decoder import FastDecoder, KVRow
from inference.model.memory import give_back_freed_memory

# A row is allocated for its prompt plus this many tokens (rounded up to
# ROUND), and doubled when a reply outgrows it, never beyond what the request
# can hold (prompt + max_new_tokens) or the context window.
HEADROOM = 128
ROUND = 64
# Freed rows are handed back to the operating system (malloc_trim) once this
# much has been freed, and whenever the engine falls idle.
TRIM_AFTER_FREED_BYTES = 64 * 1024 * 1024


def capacity_for(needed: int, most: int, current: int = 0) -> int:
    """A row's capacity for `needed` positions: headroom or doubling, within `most`."""
    wanted = max(needed + HEADROOM, 2 * current)
    wanted = -(-wanted // ROUND) * ROUND
    return max(needed, min(wanted, most))


class KVRows:
    def __init__(self, decoder: FastDecoder) -> None:
        self.decoder = decoder
        self.freed_bytes = 0  # since memory was last handed back

    def new(self, capacity: int) -> KVRow:
        return self.decoder.new_row(capacity)

    def grown(self, row: KVRow, capacity: int, keep: int) -> KVRow:
        """A row of `capacity` holding `row`'s first `keep` positions; `row` is freed."""
        new = self.decoder.grown(row, capacity, keep)
        self.free(row)
        return new

    def free(self, row: KVRow) -> None:
        self.freed_bytes += row.nbytes

    def trim(self, *, idle: bool) -> None:
        """Hand freed memory back once enough is freed, or whenever the engine is idle."""
        if self.freed_bytes >= TRIM_AFTER_FREED_BYTES or (self.freed_bytes and idle):
            give_back_freed_memory()
            self.freed_bytes = 0

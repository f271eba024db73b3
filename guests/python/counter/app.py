"""A test handler that keeps state in the interpreter between calls: a
module-level counter and a list on the heap that grows by one entry per call.
It rejects every message with `count N, heap M`, so a test can tell a fresh
instance (always `count 1, heap 1`) from a reused one (the numbers grow).
tests/tests/sandbox_interpreted.rs runs it.
"""

import wit_world
from wit_world.imports.types import Message, Outcome, Outcome_Reject

count = 0
heap = []


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> Outcome:
        global count
        count += 1
        heap.append(bytes(msg.body))
        return Outcome_Reject(f"count {count}, heap {len(heap)}")

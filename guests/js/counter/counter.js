// A test handler that keeps state in the interpreter between calls: a
// module-level counter and an array on the heap that grows by one entry per
// call. It rejects every message with `count N, heap M`, so a test can tell a
// fresh instance (always `count 1, heap 1`) from a reused one (the numbers
// grow). tests/tests/sandbox_interpreted.rs runs it.

let count = 0;
const heap = [];

/**
 * @param {import('warren:handler/types@0.2.0').Message} msg
 * @returns {import('warren:handler/types@0.2.0').Outcome}
 */
export function handle(msg) {
  count += 1;
  heap.push(msg.body.slice());
  return { tag: "reject", val: `count ${count}, heap ${heap.length}` };
}

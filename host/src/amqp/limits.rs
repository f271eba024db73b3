//! The limits that keep hostile deliveries from hurting the host: how deep
//! a header may nest, how long a reason may be, how large a header frame
//! warren writes. `docs/security.md` lists each with what warren does.
//!
//! Every walk over a field value here is iterative: a publisher can nest
//! values about 26,000 deep within RabbitMQ's default `frame_max`, and a
//! recursive walk of that would overflow a thread's stack. It does not
//! decide what happens to a message that breaks a limit; the pipeline does.

use std::borrow::Cow;

use lapin::types::{AMQPValue, FieldTable};

/// How deep nested tables and arrays may go in headers, both ways: a
/// delivery with a deeper header is dead-lettered (kind `invalid-headers`)
/// and a guest's output with one is refused.
pub const MAX_DEPTH: usize = 32;

/// The longest reason (from a guest or from the host) written into a
/// header or a log line, in bytes; longer ones are cut on a character
/// boundary with a note of how much was cut.
pub const MAX_REASON_BYTES: usize = 1024;

/// Room left in a retry copy's header frame for what the broker adds when
/// the wait queue dead-letters it back (`x-death`, `x-first-death-*`), so
/// the copy still fits the client's `frame_max` when it returns.
pub const BROKER_HEADER_RESERVE: usize = 4096;

/// The stack of every thread warren does not size itself (it sets
/// `RUST_MIN_STACK`), the AMQP client's frame-parsing thread among them:
/// parsing the deepest header RabbitMQ passes under its default `frame_max`
/// (131072 bytes, about 26,000 nested arrays) overflows 256 MiB there and
/// fits in 512; this leaves twice that. It is address space: only what a
/// message's nesting touches is used.
pub const THREAD_STACK_BYTES: usize = 1 << 30;

/// Bytes of a content header frame that are not properties: the frame
/// header and end (8), class, weight, body size and the property flags
/// (14).
const HEADER_FRAME_OVERHEAD: usize = 22;

/// `s`, cut to at most `max` bytes on a character boundary; a cut text
/// ends with how many bytes were left off.
pub fn cap_text(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let note = format!("... [{} more bytes]", s.len());
    let keep = max.saturating_sub(note.len());
    let mut end = keep.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... [{} more bytes]", &s[..end], s.len() - end))
}

/// A reason as warren writes it: at most [`MAX_REASON_BYTES`].
pub fn cap_reason(s: &str) -> Cow<'_, str> {
    cap_text(s, MAX_REASON_BYTES)
}

/// How deep `v` nests: 0 for a scalar, 1 for an array of scalars, ...
pub fn depth(v: &AMQPValue) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            AMQPValue::FieldArray(a) => stack.extend(a.as_slice().iter().map(|v| (v, d + 1))),
            AMQPValue::FieldTable(t) => stack.extend(t.inner().values().map(|v| (v, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// Why a message whose header `name` nests `depth` levels is not handed
/// to a guest (dead-lettered as `invalid-headers`): one wording for
/// `warren run` and `warren test`.
pub fn too_deep_reason(name: &str, depth: usize) -> String {
    format!(
        "header {:?} nests {depth} levels deep; at most {MAX_DEPTH} are accepted",
        cap_text(name, 64)
    )
}

/// The first header of `table` that nests deeper than [`MAX_DEPTH`], with
/// its depth.
pub fn too_deep(table: &FieldTable) -> Option<(String, usize)> {
    table.inner().iter().find_map(|(k, v)| {
        let d = depth(v);
        (d > MAX_DEPTH).then(|| (k.to_string(), d))
    })
}

/// The encoded size of `v` in a field table or array: its type byte and
/// its payload.
pub fn value_size(v: &AMQPValue) -> usize {
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += 1 + match v {
            AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
            AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
            AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
            AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
            AMQPValue::DecimalValue(_) => 5,
            AMQPValue::ShortString(s) => 1 + s.as_str().len(),
            AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
            AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
            AMQPValue::Void => 0,
            AMQPValue::FieldArray(a) => {
                stack.extend(a.as_slice());
                4
            }
            AMQPValue::FieldTable(t) => {
                stack.extend(t.inner().values());
                4 + t
                    .inner()
                    .keys()
                    .map(|k| 1 + k.as_str().len())
                    .sum::<usize>()
            }
        };
    }
    total
}

/// The encoded size of one table entry: its name and its value.
pub fn entry_size(name: &str, v: &AMQPValue) -> usize {
    1 + name.len() + value_size(v)
}

/// The encoded size of a field table, with its length prefix.
pub fn table_size(t: &FieldTable) -> usize {
    4 + t
        .inner()
        .iter()
        .map(|(k, v)| entry_size(k.as_str(), v))
        .sum::<usize>()
}

/// How many bytes of headers a content header frame can carry under
/// `frame_max` next to `other_properties` bytes of other properties.
pub fn header_budget(frame_max: usize, other_properties: usize) -> usize {
    frame_max.saturating_sub(HEADER_FRAME_OVERHEAD + other_properties)
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldArray;

    use super::*;

    #[test]
    fn cap_text_cuts_on_a_character_boundary_and_says_how_much() {
        assert_eq!(cap_text("short", 10), "short");
        let long = "é".repeat(2000);
        let cut = cap_text(&long, 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with("more bytes]"), "{cut}");
    }

    #[test]
    fn depth_and_size_walk_deep_values_without_recursion() {
        let mut v = AMQPValue::Void;
        for _ in 0..200_000 {
            v = AMQPValue::FieldArray(FieldArray::from(vec![v]));
        }
        assert_eq!(depth(&v), 200_000);
        assert_eq!(value_size(&v), 200_000 * 5 + 1);
        // Dropping it recurses inside the dependency; hand it to a thread
        // with room for that.
        std::thread::Builder::new()
            .stack_size(512 << 20)
            .spawn(move || drop(v))
            .expect("spawn")
            .join()
            .expect("drop");
    }
}

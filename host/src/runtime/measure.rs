//! What a guest's outbound headers would cost the host once expanded: the
//! bytes and the number of values that converting them to an AMQP field
//! table would build, computed without building them.
//!
//! The headers' `nested` arena is a graph, not a tree: two entries may
//! point at the same nested value, and so may two items of one nested
//! value. Expanded, `nested[i] = [array(i+1), array(i+1)]` doubles at each
//! level, so the cost of each node is computed once (memoised) and counted
//! once per reference, and every sum is checked against the budget as it
//! grows. Cycles and nesting deeper than [`MAX_DEPTH`] are refused.
//!
//! It reads the headers through [`Arena`], so the same count runs over the
//! guest's memory before anything is copied (`lift.rs`) and over owned
//! values. It does not convert anything; `pipeline/convert.rs` does.

use super::bindings::{FieldValue, Headers, Nested};
use super::limits::{HEADER_VALUE_COST, MAX_SHORT_STRING};

/// How deep nested tables and arrays may go (the same depth the conversion
/// allows).
pub const MAX_DEPTH: usize = 32;

/// One header value as measured.
#[derive(Clone, Copy, Debug)]
pub(super) enum Value {
    /// A scalar, text or bytes value, with the bytes of its payload.
    Leaf(usize),
    /// A pointer into the arena (an array or a table: whether it points
    /// at the right kind is the conversion's to check).
    Nested(u32),
}

/// Read access to headers, by index, without copying them.
pub(super) trait Arena {
    type Error;
    fn entries(&self) -> usize;
    /// Top-level entry `k`: its name's length and its value.
    fn entry(&mut self, k: usize) -> Result<(usize, Value), Self::Error>;
    fn nested(&self) -> usize;
    /// Nested value `i`: its number of items.
    fn node(&mut self, i: usize) -> Result<usize, Self::Error>;
    /// Item `k` of nested value `i`: its name's length (0 in an array) and
    /// its value.
    fn item(&mut self, i: usize, k: usize) -> Result<(usize, Value), Self::Error>;
}

/// What expanded headers cost: bytes (payloads, names and
/// [`HEADER_VALUE_COST`] per value) and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Cost {
    pub bytes: usize,
    pub values: usize,
}

/// Why headers were refused, or the arena could not be read.
#[derive(Debug)]
pub(super) enum Refused<E> {
    /// Over a limit or malformed: the text is for the guest.
    Limit(String),
    Read(E),
}

impl<E> From<E> for Refused<E> {
    fn from(e: E) -> Self {
        Refused::Read(e)
    }
}

/// The expanded cost of `arena`'s headers, refused as soon as it passes
/// `max_bytes` or `max_values`. A name longer than an AMQP short string,
/// a cycle or nesting deeper than [`MAX_DEPTH`] is refused too; a dangling
/// index or a kind mismatch is left to the conversion, which names it.
pub(super) fn headers<A: Arena>(
    arena: &mut A,
    max_bytes: usize,
    max_values: usize,
) -> Result<Cost, Refused<A::Error>> {
    // Every entry and every arena slot is at least one value: refused
    // before anything is read or the memo is sized.
    if arena.entries() > max_values || arena.nested() > max_values {
        return Err(Refused::Limit(format!(
            "headers have {} entries and {} nested values; at most {max_values} values per message",
            arena.entries(),
            arena.nested()
        )));
    }
    let mut m = Measure {
        memo: vec![Slot::Unseen; arena.nested()],
        max_bytes,
        max_values,
    };
    let mut total = Cost::default();
    for k in 0..arena.entries() {
        let (name, value) = arena.entry(k)?;
        let c = m.value(arena, name, value, 0)?;
        m.add(&mut total, c)?;
    }
    // Slots nothing points to are still copied into the host: counted once.
    for i in 0..arena.nested() {
        if matches!(m.memo[i], Slot::Unseen) {
            let c = m.node(arena, i, 1)?;
            m.add(&mut total, c)?;
        }
    }
    Ok(total)
}

#[derive(Clone, Copy)]
enum Slot {
    Unseen,
    OnPath,
    Done(Cost),
}

struct Measure {
    memo: Vec<Slot>,
    max_bytes: usize,
    max_values: usize,
}

impl Measure {
    fn add<E>(&self, total: &mut Cost, c: Cost) -> Result<(), Refused<E>> {
        total.bytes = total.bytes.saturating_add(c.bytes);
        total.values = total.values.saturating_add(c.values);
        if total.bytes > self.max_bytes {
            return Err(Refused::Limit(format!(
                "headers expand to more than {} bytes",
                self.max_bytes
            )));
        }
        if total.values > self.max_values {
            return Err(Refused::Limit(format!(
                "headers expand to more than {} values",
                self.max_values
            )));
        }
        Ok(())
    }

    fn value<A: Arena>(
        &mut self,
        arena: &mut A,
        name: usize,
        v: Value,
        depth: usize,
    ) -> Result<Cost, Refused<A::Error>> {
        if name > MAX_SHORT_STRING {
            return Err(Refused::Limit(format!(
                "a header name is {name} bytes; at most {MAX_SHORT_STRING}"
            )));
        }
        let own = Cost {
            bytes: name + HEADER_VALUE_COST,
            values: 1,
        };
        let mut c = own;
        match v {
            Value::Leaf(payload) => c.bytes = c.bytes.saturating_add(payload),
            Value::Nested(i) => {
                let inner = self.node(arena, i as usize, depth + 1)?;
                self.add(&mut c, inner)?;
            }
        }
        Ok(c)
    }

    fn node<A: Arena>(
        &mut self,
        arena: &mut A,
        i: usize,
        depth: usize,
    ) -> Result<Cost, Refused<A::Error>> {
        let Some(slot) = self.memo.get(i).copied() else {
            // Dangling: the conversion refuses it by name.
            return Ok(Cost::default());
        };
        match slot {
            Slot::Done(c) => return Ok(c),
            Slot::OnPath => {
                return Err(Refused::Limit(format!(
                    "headers refer to themselves (nested[{i}] contains itself)"
                )));
            }
            Slot::Unseen => {}
        }
        if depth > MAX_DEPTH {
            return Err(Refused::Limit(format!(
                "headers nest deeper than {MAX_DEPTH} levels"
            )));
        }
        self.memo[i] = Slot::OnPath;
        let len = arena.node(i)?;
        let mut total = Cost::default();
        for k in 0..len {
            let (name, v) = arena.item(i, k)?;
            let c = self.value(arena, name, v, depth)?;
            self.add(&mut total, c)?;
        }
        self.memo[i] = Slot::Done(total);
        Ok(total)
    }
}

/// Owned headers, as the conversion sees them.
impl Arena for &Headers {
    type Error = std::convert::Infallible;

    fn entries(&self) -> usize {
        self.entries.len()
    }

    fn entry(&mut self, k: usize) -> Result<(usize, Value), Self::Error> {
        let e = &self.entries[k];
        Ok((e.name.len(), owned_value(&e.value)))
    }

    fn nested(&self) -> usize {
        self.nested.len()
    }

    fn node(&mut self, i: usize) -> Result<usize, Self::Error> {
        Ok(match &self.nested[i] {
            Nested::Array(items) => items.len(),
            Nested::Table(entries) => entries.len(),
        })
    }

    fn item(&mut self, i: usize, k: usize) -> Result<(usize, Value), Self::Error> {
        Ok(match &self.nested[i] {
            Nested::Array(items) => (0, owned_value(&items[k])),
            Nested::Table(entries) => (entries[k].name.len(), owned_value(&entries[k].value)),
        })
    }
}

fn owned_value(v: &FieldValue) -> Value {
    match v {
        FieldValue::Text(s) => Value::Leaf(s.len()),
        FieldValue::Bytes(b) => Value::Leaf(b.len()),
        FieldValue::Array(i) | FieldValue::Table(i) => Value::Nested(*i),
        _ => Value::Leaf(8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::Header;

    fn measure(h: &Headers) -> Result<Cost, String> {
        let mut a = h;
        headers(&mut a, 1 << 20, 4096).map_err(|e| match e {
            Refused::Limit(s) => s,
            Refused::Read(never) => match never {},
        })
    }

    fn entry(name: &str, value: FieldValue) -> Header {
        Header {
            name: name.into(),
            value,
        }
    }

    #[test]
    fn shared_nested_values_count_once_per_reference_without_expanding() {
        // nested[i] = [array(i+1), array(i+1)]: 2^31 values expanded.
        let depth = 31;
        let mut nested: Vec<Nested> = (0..depth)
            .map(|i| Nested::Array(vec![FieldValue::Array(i + 1), FieldValue::Array(i + 1)]))
            .collect();
        nested.push(Nested::Array(vec![]));
        let bomb = Headers {
            entries: vec![entry("a", FieldValue::Array(0))],
            nested,
        };
        let err = measure(&bomb).unwrap_err();
        assert!(err.contains("more than 4096 values"), "{err}");

        // Small sharing is fine, and counted per reference.
        let shared = Headers {
            entries: vec![
                entry("a", FieldValue::Array(0)),
                entry("b", FieldValue::Array(0)),
            ],
            nested: vec![Nested::Array(vec![FieldValue::Text("xyz".into())])],
        };
        let c = measure(&shared).unwrap();
        assert_eq!(c.values, 4);
        assert_eq!(
            c.bytes,
            2 * (1 + HEADER_VALUE_COST) + 2 * (3 + HEADER_VALUE_COST)
        );
    }

    #[test]
    fn cycles_long_names_and_many_values_are_refused() {
        let cycle = Headers {
            entries: vec![entry("a", FieldValue::Table(0))],
            nested: vec![Nested::Table(vec![entry("b", FieldValue::Table(0))])],
        };
        assert!(measure(&cycle).unwrap_err().contains("refer to themselves"));
        let long = Headers {
            entries: vec![entry(&"n".repeat(256), FieldValue::Void)],
            nested: vec![],
        };
        assert!(measure(&long).unwrap_err().contains("256 bytes"));
        let many = Headers {
            entries: (0..5000)
                .map(|i| entry(&i.to_string(), FieldValue::Void))
                .collect(),
            nested: vec![],
        };
        assert!(measure(&many).unwrap_err().contains("5000 entries"));
        let big = Headers {
            entries: vec![entry("a", FieldValue::Bytes(vec![0; 2 << 20]))],
            nested: vec![],
        };
        assert!(
            measure(&big)
                .unwrap_err()
                .contains("more than 1048576 bytes")
        );
    }
}

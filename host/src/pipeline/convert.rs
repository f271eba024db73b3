//! The one place where AMQP's types and the guest's meet: a delivery as
//! the guest sees it ([`message_for_guest`]), and a guest's output as AMQP
//! properties ([`outbound_properties`]).
//!
//! Field tables nest; WIT types cannot, so nested arrays and tables go into
//! the `nested` arena of [`Headers`] and are pointed to by index. Both ways
//! stop at [`MAX_DEPTH`], so neither recurses further than that whatever a
//! publisher or a guest sends, and neither panics on any input.

use crate::amqp::limits::{MAX_DEPTH, cap_text};
use crate::amqp::wire::{
    AMQPValue, BasicProperties, ByteArray, DecimalValue, FieldArray, FieldTable, ShortString,
};
use crate::amqp::{INTERNAL_PREFIX, Inbound};
use crate::runtime::{Decimal, FieldValue, Header, Headers, Message, Nested, Outbound};

/// The header RabbitMQ adds when a message is dead-lettered, here by a wait
/// queue on its way back; noise to a handler.
const X_DEATH: &str = "x-death";

/// How many values a guest's headers may expand to. The runtime already
/// refused, at `publish`, headers over the handler's `max_header_values`
/// (shared nested values counted once per reference); this is the backstop
/// that keeps a shared arena from expanding exponentially here whatever
/// reached it.
const MAX_VALUES: usize = 1 << 16;

pub(crate) fn is_internal(name: &str) -> bool {
    name.starts_with(INTERNAL_PREFIX) || name == X_DEATH
}

/// The delivery as the guest sees it: its properties, its headers without
/// warren's and the broker's bookkeeping, where it was first published,
/// which attempt this is, and its dedup key and fencing token.
pub fn message_for_guest(msg: &Inbound, dedup_key: Option<String>, fencing_token: u64) -> Message {
    let p = msg.properties();
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.to_string());
    Message {
        body: msg.body().to_vec(),
        content_type: text(p.content_type()),
        content_encoding: text(p.content_encoding()),
        message_id: text(p.message_id()),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        timestamp: *p.timestamp(),
        type_: text(p.kind()),
        app_id: text(p.app_id()),
        headers: headers_from_table(p.headers().as_ref()),
        exchange: msg.original_exchange(),
        routing_key: msg.original_routing_key(),
        redelivered: msg.redelivered(),
        attempt: msg.attempt(),
        dedup_key,
        fencing_token,
    }
}

/// The headers of a delivery as the guest sees them: without warren's own.
/// Values nested deeper than [`MAX_DEPTH`] show as void (the pipeline
/// dead-letters such deliveries before a guest sees them).
pub fn headers_from_table(table: Option<&FieldTable>) -> Headers {
    let mut nested = Vec::new();
    let entries = table
        .map(|t| {
            t.inner()
                .iter()
                .filter(|(k, _)| !is_internal(k.as_str()))
                .map(|(k, v)| Header {
                    name: k.to_string(),
                    value: value_in(v, &mut nested, 0),
                })
                .collect()
        })
        .unwrap_or_default();
    Headers { entries, nested }
}

fn value_in(v: &AMQPValue, nested: &mut Vec<Nested>, depth: usize) -> FieldValue {
    let deeper = matches!(v, AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_));
    if deeper && depth >= MAX_DEPTH {
        return FieldValue::Void;
    }
    match v {
        AMQPValue::Boolean(b) => FieldValue::Boolean(*b),
        AMQPValue::ShortShortInt(i) => FieldValue::I8(*i),
        AMQPValue::ShortShortUInt(u) => FieldValue::U8(*u),
        AMQPValue::ShortInt(i) => FieldValue::I16(*i),
        AMQPValue::ShortUInt(u) => FieldValue::U16(*u),
        AMQPValue::LongInt(i) => FieldValue::I32(*i),
        AMQPValue::LongUInt(u) => FieldValue::U32(*u),
        AMQPValue::LongLongInt(i) => FieldValue::I64(*i),
        AMQPValue::Float(f) => FieldValue::F32(*f),
        AMQPValue::Double(f) => FieldValue::F64(*f),
        AMQPValue::DecimalValue(d) => FieldValue::Decimal(Decimal {
            scale: d.scale,
            value: d.value,
        }),
        AMQPValue::ShortString(s) => FieldValue::Text(s.to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => FieldValue::Text(text.to_string()),
            Err(_) => FieldValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::ByteArray(b) => FieldValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
        AMQPValue::Void => FieldValue::Void,
        AMQPValue::FieldArray(a) => {
            // Reserve the slot first so that the index is stable while the
            // items (which may nest further) are converted.
            let at = nested.len();
            nested.push(Nested::Array(Vec::new()));
            let items = a
                .as_slice()
                .iter()
                .map(|v| value_in(v, nested, depth + 1))
                .collect();
            nested[at] = Nested::Array(items);
            FieldValue::Array(at as u32)
        }
        AMQPValue::FieldTable(t) => {
            let at = nested.len();
            nested.push(Nested::Table(Vec::new()));
            let entries = t
                .inner()
                .iter()
                .map(|(k, v)| Header {
                    name: k.to_string(),
                    value: value_in(v, nested, depth + 1),
                })
                .collect();
            nested[at] = Nested::Table(entries);
            FieldValue::Table(at as u32)
        }
    }
}

/// The field table for headers a guest built. Refuses names longer than 255
/// bytes, names in warren's own `x-warren-` space, dangling nested indices,
/// nesting deeper than [`MAX_DEPTH`] (which is also how an index cycle
/// ends) and more than 65,536 values once expanded.
pub fn table_from_headers(h: &Headers) -> Result<FieldTable, String> {
    let mut left = MAX_VALUES;
    entries_out(&h.entries, &h.nested, 0, &mut left)
}

fn entries_out(
    entries: &[Header],
    nested: &[Nested],
    depth: usize,
    left: &mut usize,
) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for e in entries {
        if e.name.starts_with(INTERNAL_PREFIX) {
            return Err(format!(
                "header name {:?} is reserved for the host ({INTERNAL_PREFIX}*)",
                cap_text(&e.name, 64)
            ));
        }
        let name = ShortString::try_new(e.name.clone()).map_err(|_| {
            format!(
                "header name {:?} is longer than 255 bytes",
                cap_text(&e.name, 64)
            )
        })?;
        table.insert(name, value_out(&e.value, nested, depth, left)?);
    }
    Ok(table)
}

fn value_out(
    v: &FieldValue,
    nested: &[Nested],
    depth: usize,
    left: &mut usize,
) -> Result<AMQPValue, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "headers nest deeper than {MAX_DEPTH} levels (or refer to themselves)"
        ));
    }
    // Counted per value visited, so a value shared by many others costs
    // once per place it appears, as it will on the wire.
    *left = left
        .checked_sub(1)
        .ok_or_else(|| format!("headers expand to more than {MAX_VALUES} values"))?;
    let resolve = |i: u32| {
        nested.get(i as usize).ok_or_else(|| {
            format!(
                "header value points to nested[{i}], but there are only {} nested values",
                nested.len()
            )
        })
    };
    Ok(match v {
        FieldValue::Void => AMQPValue::Void,
        FieldValue::Boolean(b) => AMQPValue::Boolean(*b),
        FieldValue::I8(i) => AMQPValue::ShortShortInt(*i),
        FieldValue::U8(u) => AMQPValue::ShortShortUInt(*u),
        FieldValue::I16(i) => AMQPValue::ShortInt(*i),
        FieldValue::U16(u) => AMQPValue::ShortUInt(*u),
        FieldValue::I32(i) => AMQPValue::LongInt(*i),
        FieldValue::U32(u) => AMQPValue::LongUInt(*u),
        FieldValue::I64(i) => AMQPValue::LongLongInt(*i),
        FieldValue::F32(f) => AMQPValue::Float(*f),
        FieldValue::F64(f) => AMQPValue::Double(*f),
        FieldValue::Decimal(d) => AMQPValue::DecimalValue(DecimalValue {
            scale: d.scale,
            value: d.value,
        }),
        FieldValue::Text(s) => AMQPValue::LongString(s.as_str().into()),
        FieldValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.as_slice())),
        FieldValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        FieldValue::Array(i) => match resolve(*i)? {
            Nested::Array(items) => AMQPValue::FieldArray(FieldArray::from(
                items
                    .iter()
                    .map(|v| value_out(v, nested, depth + 1, left))
                    .collect::<Result<Vec<_>, _>>()?,
            )),
            Nested::Table(_) => return Err(format!("header value array({i}) points to a table")),
        },
        FieldValue::Table(i) => match resolve(*i)? {
            Nested::Table(entries) => {
                AMQPValue::FieldTable(entries_out(entries, nested, depth + 1, left)?)
            }
            Nested::Array(_) => return Err(format!("header value table({i}) points to an array")),
        },
    })
}

fn short(what: &str, s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s.to_string()).map_err(|_| format!("{what} is longer than 255 bytes"))
}

/// Properties for a guest's outbound message: persistent, with the host's
/// deterministic message id.
pub fn outbound_properties(
    o: &Outbound,
    message_id: &str,
) -> Result<(BasicProperties, FieldTable), String> {
    let headers = table_from_headers(&o.headers)?;
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(short("message id", message_id)?);
    if let Some(ct) = &o.content_type {
        p = p.with_content_type(short("content-type", ct)?);
    }
    if let Some(ce) = &o.content_encoding {
        p = p.with_content_encoding(short("content-encoding", ce)?);
    }
    if let Some(c) = &o.correlation_id {
        p = p.with_correlation_id(short("correlation-id", c)?);
    }
    if let Some(t) = &o.type_ {
        p = p.with_type(short("type", t)?);
    }
    Ok((p, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(k.into(), v);
        }
        t
    }

    #[test]
    fn typed_and_nested_values_round_trip() {
        let inner = table(vec![
            ("deep", AMQPValue::LongLongInt(-5)),
            ("flag", AMQPValue::Boolean(true)),
        ]);
        let original = table(vec![
            ("count", AMQPValue::LongInt(42)),
            ("ratio", AMQPValue::Double(0.5)),
            ("name", AMQPValue::LongString("bob".into())),
            (
                "raw",
                AMQPValue::ByteArray(ByteArray::from(&b"\xff\x00"[..])),
            ),
            ("when", AMQPValue::Timestamp(1_700_000_000)),
            (
                "price",
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 1999,
                }),
            ),
            ("nothing", AMQPValue::Void),
            (
                "list",
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::ShortShortUInt(7),
                    AMQPValue::FieldTable(inner.clone()),
                ])),
            ),
        ]);
        let h = headers_from_table(Some(&original));
        assert_eq!(h.entries.len(), 8);
        let list = h.entries.iter().find(|e| e.name == "list").unwrap();
        let FieldValue::Array(i) = list.value else {
            panic!("{:?}", list.value)
        };
        let Nested::Array(items) = &h.nested[i as usize] else {
            panic!()
        };
        assert_eq!(items[0], FieldValue::U8(7));
        assert!(matches!(items[1], FieldValue::Table(_)));
        assert_eq!(table_from_headers(&h).unwrap(), original);
    }

    #[test]
    fn warren_and_broker_bookkeeping_is_hidden() {
        let t = table(vec![
            ("x-warren-attempt", AMQPValue::LongInt(3)),
            ("x-death", AMQPValue::FieldArray(FieldArray::default())),
            ("visible", AMQPValue::Boolean(false)),
        ]);
        let h = headers_from_table(Some(&t));
        assert_eq!(
            h.entries,
            vec![Header {
                name: "visible".into(),
                value: FieldValue::Boolean(false)
            }]
        );
    }

    #[test]
    fn bad_guest_headers_are_refused_with_a_reason() {
        let dangling = Headers {
            entries: vec![Header {
                name: "a".into(),
                value: FieldValue::Array(3),
            }],
            nested: vec![],
        };
        assert_eq!(
            table_from_headers(&dangling).unwrap_err(),
            "header value points to nested[3], but there are only 0 nested values"
        );
        let cycle = Headers {
            entries: vec![Header {
                name: "a".into(),
                value: FieldValue::Array(0),
            }],
            nested: vec![Nested::Array(vec![FieldValue::Array(0)])],
        };
        assert!(
            table_from_headers(&cycle)
                .unwrap_err()
                .contains("deeper than 32")
        );
        let bomb = Headers {
            entries: vec![Header {
                name: "a".into(),
                value: FieldValue::Array(0),
            }],
            nested: (0..31)
                .map(|i| Nested::Array(vec![FieldValue::Array(i + 1), FieldValue::Array(i + 1)]))
                .chain([Nested::Array(vec![])])
                .collect(),
        };
        assert_eq!(
            table_from_headers(&bomb).unwrap_err(),
            "headers expand to more than 65536 values"
        );
        let long = Headers {
            entries: vec![Header {
                name: "é".repeat(150),
                value: FieldValue::Void,
            }],
            nested: vec![],
        };
        assert!(
            table_from_headers(&long)
                .unwrap_err()
                .contains("longer than 255 bytes")
        );
    }

    #[test]
    fn a_long_multibyte_name_is_refused_without_a_panic() {
        let h = Headers {
            entries: vec![Header {
                name: "ü".repeat(200),
                value: FieldValue::Void,
            }],
            nested: vec![],
        };
        assert!(
            table_from_headers(&h)
                .unwrap_err()
                .contains("longer than 255")
        );
        let reserved = Headers {
            entries: vec![Header {
                name: "x-warren-routing-key".into(),
                value: FieldValue::Text("elsewhere".into()),
            }],
            nested: vec![],
        };
        assert!(
            table_from_headers(&reserved)
                .unwrap_err()
                .contains("reserved")
        );
    }
}

#[cfg(test)]
#[path = "convert_props.rs"]
mod props;

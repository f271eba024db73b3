//! Property tests of the conversions both ways: any table, name, nesting
//! or byte string converts or is refused with a reason, never a panic.

use crate::amqp::wire::LongString;
use proptest::prelude::*;

use super::*;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z-]{0,12}",
        ".{0,300}",
        Just("x-warren-attempt".to_string()),
        Just("x-death".to_string())
    ]
}

fn scalar() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        (-1e9f64..1e9).prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        ".{0,20}".prop_map(|s| AMQPValue::LongString(s.as_str().into())),
        proptest::collection::vec(any::<u8>(), 0..20)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        proptest::collection::vec(any::<u8>(), 0..20)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b.as_slice()))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
    ]
}

fn value() -> impl Strategy<Value = AMQPValue> {
    scalar().prop_recursive(40, 200, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            proptest::collection::vec(("[a-z]{0,6}", inner), 0..4).prop_map(|v| {
                let mut t = FieldTable::default();
                for (k, v) in v {
                    t.insert(k.into(), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

fn inbound_table() -> impl Strategy<Value = FieldTable> {
    proptest::collection::vec(("[a-z-]{0,12}", value()), 0..6).prop_map(|v| {
        let mut t = FieldTable::default();
        for (k, v) in v {
            t.insert(k.into(), v);
        }
        t
    })
}

fn field_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        Just(FieldValue::Void),
        any::<i32>().prop_map(FieldValue::I32),
        ".{0,10}".prop_map(FieldValue::Text),
        proptest::collection::vec(any::<u8>(), 0..10).prop_map(FieldValue::Bytes),
        any::<u32>().prop_map(|i| FieldValue::Array(i % 8)),
        any::<u32>().prop_map(|i| FieldValue::Table(i % 8)),
    ]
}

/// Guest headers: any names, any values, nested indices that may
/// dangle, point to the wrong kind or form cycles.
fn guest_headers() -> impl Strategy<Value = Headers> {
    let entries = proptest::collection::vec(
        (name(), field_value()).prop_map(|(name, value)| Header { name, value }),
        0..6,
    );
    let nested = proptest::collection::vec(
        prop_oneof![
            proptest::collection::vec(field_value(), 0..4).prop_map(Nested::Array),
            proptest::collection::vec(
                (name(), field_value()).prop_map(|(name, value)| Header { name, value }),
                0..4
            )
            .prop_map(Nested::Table),
        ],
        0..8,
    );
    (entries, nested).prop_map(|(entries, nested)| Headers { entries, nested })
}

proptest! {
    /// Any guest headers convert or are refused with a reason, never a
    /// panic; what converts comes back as it went (after one pass, which
    /// settles the arena's order) and never carries `x-warren-*`.
    #[test]
    fn guest_headers_convert_or_are_refused(h in guest_headers()) {
        if let Ok(t) = table_from_headers(&h) {
            prop_assert!(t.inner().keys().all(|k| !k.as_str().starts_with(INTERNAL_PREFIX)));
            let once = headers_from_table(Some(&t));
            let again = table_from_headers(&once).expect("a converted table converts again");
            prop_assert_eq!(headers_from_table(Some(&again)), once);
        }
    }

    /// Any inbound table converts without a panic, hides the
    /// bookkeeping, and (within the depth limit) converts back to a
    /// table that converts to the same headers.
    #[test]
    fn inbound_tables_convert_both_ways(t in inbound_table(), extra in name()) {
        let mut t = t;
        t.insert(ShortString::try_new(extra.clone()).unwrap_or_else(|_| "long".into()), AMQPValue::Void);
        let h = headers_from_table(Some(&t));
        prop_assert!(h.entries.iter().all(|e| !is_internal(&e.name)));
        let back = table_from_headers(&h).expect("inbound headers convert back");
        prop_assert_eq!(headers_from_table(Some(&back)), h);
    }

    /// Nesting past the limit turns into void on the way in and is
    /// refused on the way out, at every depth.
    #[test]
    fn depth_is_bounded_both_ways(d in 0usize..200, table in any::<bool>()) {
        let mut v = AMQPValue::Boolean(true);
        for _ in 0..d {
            v = if table {
                let mut t = FieldTable::default();
                t.insert("k".into(), v);
                AMQPValue::FieldTable(t)
            } else {
                AMQPValue::FieldArray(FieldArray::from(vec![v]))
            };
        }
        prop_assert_eq!(crate::amqp::limits::depth(&v), d);
        let mut t = FieldTable::default();
        t.insert("h".into(), v);
        let h = headers_from_table(Some(&t));
        prop_assert!(h.nested.len() <= MAX_DEPTH);
        let out = table_from_headers(&h);
        if d <= MAX_DEPTH {
            prop_assert_eq!(out.expect("within the limit"), t);
        }
    }
}

//! What a retry or dead-letter copy of a delivery carries over (its
//! properties and the publisher's headers, without the broker's and
//! warren's own bookkeeping or headers too deep to copy), and how large a
//! header frame's other properties are.

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::INTERNAL_PREFIX;
use super::consumer::Inbound;
use super::limits::{MAX_DEPTH, depth};

/// The headers of `msg` to carry onto a retry or dead-letter copy: the
/// publisher's own, without the broker's `x-death` trail, warren's previous
/// bookkeeping, or any header nested deeper than the limit (those are
/// named in the second value).
pub(super) fn carried_headers(msg: &Inbound) -> (BTreeMap<ShortString, AMQPValue>, Vec<String>) {
    let (mut t, dropped) = carried_from(msg.properties().headers().as_ref());
    for (k, v) in msg.copy_headers() {
        if let Ok(k) = ShortString::try_new(k.as_str()) {
            t.insert(k, AMQPValue::LongString(v.as_str().into()));
        }
    }
    (t, dropped)
}

/// [`carried_headers`] of a header table.
pub(super) fn carried_from(
    headers: Option<&FieldTable>,
) -> (BTreeMap<ShortString, AMQPValue>, Vec<String>) {
    let mut t = BTreeMap::new();
    let mut dropped = Vec::new();
    if let Some(h) = headers {
        for (k, v) in h.inner() {
            if k.as_str() == "x-death" || k.as_str().starts_with(INTERNAL_PREFIX) {
                continue;
            }
            // Checked before the clone: cloning a deep value recurses.
            if depth(v) > MAX_DEPTH {
                dropped.push(k.to_string());
                continue;
            }
            t.insert(k.clone(), v.clone());
        }
    }
    (t, dropped)
}

/// A copy of `p` without its headers (which are rebuilt, and may be too
/// deep to clone safely).
pub(super) fn without_headers(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    let s = |v: &Option<ShortString>| v.clone();
    if let Some(v) = s(p.content_type()) {
        out = out.with_content_type(v);
    }
    if let Some(v) = s(p.content_encoding()) {
        out = out.with_content_encoding(v);
    }
    if let Some(v) = *p.delivery_mode() {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = *p.priority() {
        out = out.with_priority(v);
    }
    if let Some(v) = s(p.correlation_id()) {
        out = out.with_correlation_id(v);
    }
    if let Some(v) = s(p.reply_to()) {
        out = out.with_reply_to(v);
    }
    if let Some(v) = s(p.expiration()) {
        out = out.with_expiration(v);
    }
    if let Some(v) = s(p.message_id()) {
        out = out.with_message_id(v);
    }
    if let Some(v) = *p.timestamp() {
        out = out.with_timestamp(v);
    }
    if let Some(v) = s(p.kind()) {
        out = out.with_type(v);
    }
    if let Some(v) = s(p.user_id()) {
        out = out.with_user_id(v);
    }
    if let Some(v) = s(p.app_id()) {
        out = out.with_app_id(v);
    }
    if let Some(v) = s(p.cluster_id()) {
        out = out.with_cluster_id(v);
    }
    out
}

/// The encoded size of every property of `p` but the headers.
pub(super) fn other_properties_size(p: &BasicProperties) -> usize {
    let s = |v: &Option<ShortString>| v.as_ref().map_or(0, |v| 1 + v.as_str().len());
    [
        p.content_type(),
        p.content_encoding(),
        p.correlation_id(),
        p.reply_to(),
        p.expiration(),
        p.message_id(),
        p.kind(),
        p.user_id(),
        p.app_id(),
        p.cluster_id(),
    ]
    .into_iter()
    .map(s)
    .sum::<usize>()
        + p.delivery_mode().map_or(0, |_| 1)
        + p.priority().map_or(0, |_| 1)
        + p.timestamp().map_or(0, |_| 8)
}

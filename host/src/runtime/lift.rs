//! `publish` and `log` read in the guest's memory, sizes first.
//!
//! The generated bindings copy every argument into the host before the
//! host function runs: a `publish` whose header names all point at one
//! large guest string would make the host allocate count × length before
//! any check could refuse it. These two imports are defined again over
//! borrowed views ([`WasmStr`], [`WasmList`]) that hold only a pointer and
//! a length, so the limits in `state.rs` are checked on the sizes, and only
//! what they let through is copied, once. Lifting a view checks that it
//! lies inside the guest's memory; reading a string checks its UTF-8, as
//! the generated code would (an invalid one traps the guest, as before).
//!
//! It does not decide any limit: `state.rs` does, with `measure.rs`.

use std::borrow::Cow;

use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, WasmList, WasmStr};

use super::bindings::{
    Decimal, FieldValue, Header, Headers, Level, Nested, Outbound, PublishError,
};
use super::limits::{MAX_SHORT_STRING, truncate_on_char};
use super::measure::{self, Arena, Value};
use super::state::{State, is_reserved_header};

/// The interfaces whose functions are defined here, as components name them
/// (every version the host links).
const HOSTS: [&str; 2] = ["warren:handler/host@0.1.0", "warren:handler/host@0.2.0"];

#[derive(ComponentType, Lift)]
#[component(record)]
struct OutboundRef {
    exchange: WasmStr,
    #[component(name = "routing-key")]
    routing_key: WasmStr,
    body: WasmList<u8>,
    #[component(name = "content-type")]
    content_type: Option<WasmStr>,
    #[component(name = "content-encoding")]
    content_encoding: Option<WasmStr>,
    #[component(name = "correlation-id")]
    correlation_id: Option<WasmStr>,
    #[component(name = "type")]
    type_: Option<WasmStr>,
    headers: HeadersRef,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct HeadersRef {
    entries: WasmList<HeaderRef>,
    nested: WasmList<NestedRef>,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct HeaderRef {
    name: WasmStr,
    value: FieldValueRef,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
enum NestedRef {
    #[component(name = "array")]
    Array(WasmList<FieldValueRef>),
    #[component(name = "table")]
    Table(WasmList<HeaderRef>),
}

#[derive(ComponentType, Lift)]
#[component(variant)]
enum FieldValueRef {
    #[component(name = "void")]
    Void,
    #[component(name = "boolean")]
    Boolean(bool),
    #[component(name = "i8")]
    I8(i8),
    #[component(name = "u8")]
    U8(u8),
    #[component(name = "i16")]
    I16(i16),
    #[component(name = "u16")]
    U16(u16),
    #[component(name = "i32")]
    I32(i32),
    #[component(name = "u32")]
    U32(u32),
    #[component(name = "i64")]
    I64(i64),
    #[component(name = "f32")]
    F32(f32),
    #[component(name = "f64")]
    F64(f64),
    #[component(name = "decimal")]
    Decimal(Decimal),
    #[component(name = "text")]
    Text(WasmStr),
    #[component(name = "bytes")]
    Bytes(WasmList<u8>),
    #[component(name = "timestamp")]
    Timestamp(u64),
    #[component(name = "array")]
    Array(u32),
    #[component(name = "table")]
    Table(u32),
}

/// Replaces the generated `publish` and `log` in `linker` with these.
pub(super) fn install(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    for name in HOSTS {
        let mut host = linker.instance(name)?;
        host.func_wrap(
            "publish",
            |mut cx: StoreContextMut<'_, State>, (msg,): (OutboundRef,)| {
                Ok((publish(&mut cx, &msg)?,))
            },
        )?;
        host.func_wrap(
            "log",
            |mut cx: StoreContextMut<'_, State>, (level, message): (Level, WasmStr)| {
                log(&mut cx, level, &message)?;
                Ok(())
            },
        )?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

fn log(
    cx: &mut StoreContextMut<'_, State>,
    level: Level,
    message: &WasmStr,
) -> wasmtime::Result<()> {
    if !cx.data_mut().log_line_admitted() {
        return Ok(());
    }
    let cap = cx.data().limits().log_bytes;
    let text = message.to_str(&*cx)?;
    // Copied only when it can fit under the cap at all.
    let kept = (text.len() <= cap).then(|| text.into_owned());
    match kept {
        Some(text) => cx.data_mut().log_text(level, &text),
        None => cx.data_mut().log_too_long(),
    }
    Ok(())
}

fn publish(
    cx: &mut StoreContextMut<'_, State>,
    msg: &OutboundRef,
) -> wasmtime::Result<Result<(), PublishError>> {
    let limits = *cx.data().limits();
    let len = |s: &WasmStr, cx: &StoreContextMut<'_, State>| s.to_str(cx).map(|s| s.len());
    let opt = |s: &Option<WasmStr>, cx: &StoreContextMut<'_, State>| {
        s.as_ref().map_or(Ok(0), |s| len(s, cx))
    };
    let exchange = {
        let e = msg.exchange.to_str(&*cx)?;
        if e.len() > MAX_SHORT_STRING {
            return Ok(Err(PublishError::LimitExceeded(format!(
                "exchange name is {} bytes; at most {MAX_SHORT_STRING}",
                e.len()
            ))));
        }
        e.into_owned()
    };
    let routing_key = len(&msg.routing_key, cx)?;
    let fixed = exchange.len()
        + routing_key
        + msg.body.len()
        + opt(&msg.content_type, cx)?
        + opt(&msg.content_encoding, cx)?
        + opt(&msg.correlation_id, cx)?
        + opt(&msg.type_, cx)?;

    let left = cx.data().publish_left().saturating_sub(fixed);
    let mut arena = GuestHeaders {
        cx: &mut *cx,
        h: &msg.headers,
    };
    let measured = match measure::headers(&mut arena, left, limits.max_header_values) {
        Ok(c) => Ok(c.bytes),
        Err(measure::Refused::Limit(why)) => Err(why),
        Err(measure::Refused::Read(e)) => return Err(e),
    };
    // The first reserved top-level name, looked for only once the headers
    // measured within the budget: reading a name checks its UTF-8, and
    // names that all alias one large string must not be read thousands
    // of times.
    let mut reserved = None;
    if measured.is_ok() {
        for k in 0..msg.headers.entries.len() {
            let e = msg.headers.entries.get(&mut *cx, k).expect("in range")?;
            let name = e.name.to_str(&*cx)?;
            if is_reserved_header(&name) {
                reserved = Some(truncate_on_char(&name, 64).0.to_string());
                break;
            }
        }
    }
    let admitted = cx.data_mut().admit(
        &exchange,
        routing_key,
        reserved.as_deref().into_iter(),
        fixed,
        |_| measured,
    );
    if let Err(e) = admitted {
        return Ok(Err(e));
    }
    let owned = to_owned(cx, msg, exchange)?;
    cx.data_mut().buffer(owned);
    Ok(Ok(()))
}

/// The guest's headers, read in place for [`measure::headers`].
struct GuestHeaders<'a, 's> {
    cx: &'a mut StoreContextMut<'s, State>,
    h: &'a HeadersRef,
}

impl GuestHeaders<'_, '_> {
    fn value(&self, v: &FieldValueRef) -> wasmtime::Result<Value> {
        Ok(match v {
            FieldValueRef::Text(s) => Value::Leaf(s.to_str(&*self.cx)?.len()),
            FieldValueRef::Bytes(b) => Value::Leaf(b.len()),
            FieldValueRef::Array(i) | FieldValueRef::Table(i) => Value::Nested(*i),
            _ => Value::Leaf(8),
        })
    }
}

impl Arena for GuestHeaders<'_, '_> {
    type Error = wasmtime::Error;

    fn entries(&self) -> usize {
        self.h.entries.len()
    }

    fn entry(&mut self, k: usize) -> wasmtime::Result<(usize, Value)> {
        let e = self.h.entries.get(&mut *self.cx, k).expect("in range")?;
        Ok((e.name.to_str(&*self.cx)?.len(), self.value(&e.value)?))
    }

    fn nested(&self) -> usize {
        self.h.nested.len()
    }

    fn node(&mut self, i: usize) -> wasmtime::Result<usize> {
        Ok(
            match self.h.nested.get(&mut *self.cx, i).expect("in range")? {
                NestedRef::Array(items) => items.len(),
                NestedRef::Table(entries) => entries.len(),
            },
        )
    }

    fn item(&mut self, i: usize, k: usize) -> wasmtime::Result<(usize, Value)> {
        match self.h.nested.get(&mut *self.cx, i).expect("in range")? {
            NestedRef::Array(items) => {
                let v = items.get(&mut *self.cx, k).expect("in range")?;
                Ok((0, self.value(&v)?))
            }
            NestedRef::Table(entries) => {
                let e = entries.get(&mut *self.cx, k).expect("in range")?;
                Ok((e.name.to_str(&*self.cx)?.len(), self.value(&e.value)?))
            }
        }
    }
}

/// The one copy of an admitted message into the host.
fn to_owned(
    cx: &mut StoreContextMut<'_, State>,
    msg: &OutboundRef,
    exchange: String,
) -> wasmtime::Result<Outbound> {
    let text = |s: &WasmStr, cx: &StoreContextMut<'_, State>| -> wasmtime::Result<String> {
        Ok(Cow::into_owned(s.to_str(cx)?))
    };
    let opt = |s: &Option<WasmStr>, cx: &StoreContextMut<'_, State>| {
        s.as_ref().map(|s| text(s, cx)).transpose()
    };
    let mut entries = Vec::with_capacity(msg.headers.entries.len());
    for e in msg.headers.entries.iter(&mut *cx)? {
        entries.push(e?);
    }
    let entries = entries
        .iter()
        .map(|e| header(cx, e))
        .collect::<wasmtime::Result<Vec<_>>>()?;
    let mut nodes = Vec::with_capacity(msg.headers.nested.len());
    for n in msg.headers.nested.iter(&mut *cx)? {
        nodes.push(n?);
    }
    let mut nested = Vec::with_capacity(nodes.len());
    for n in &nodes {
        nested.push(match n {
            NestedRef::Array(items) => {
                let mut refs = Vec::with_capacity(items.len());
                for v in items.iter(&mut *cx)? {
                    refs.push(v?);
                }
                Nested::Array(
                    refs.iter()
                        .map(|v| value(cx, v))
                        .collect::<wasmtime::Result<_>>()?,
                )
            }
            NestedRef::Table(list) => {
                let mut refs = Vec::with_capacity(list.len());
                for e in list.iter(&mut *cx)? {
                    refs.push(e?);
                }
                Nested::Table(
                    refs.iter()
                        .map(|e| header(cx, e))
                        .collect::<wasmtime::Result<_>>()?,
                )
            }
        });
    }
    Ok(Outbound {
        exchange,
        routing_key: text(&msg.routing_key, cx)?,
        body: msg.body.as_le_slice(&*cx).to_vec(),
        content_type: opt(&msg.content_type, cx)?,
        content_encoding: opt(&msg.content_encoding, cx)?,
        correlation_id: opt(&msg.correlation_id, cx)?,
        type_: opt(&msg.type_, cx)?,
        headers: Headers { entries, nested },
    })
}

fn header(cx: &StoreContextMut<'_, State>, e: &HeaderRef) -> wasmtime::Result<Header> {
    Ok(Header {
        name: e.name.to_str(cx)?.into_owned(),
        value: value(cx, &e.value)?,
    })
}

fn value(cx: &StoreContextMut<'_, State>, v: &FieldValueRef) -> wasmtime::Result<FieldValue> {
    Ok(match v {
        FieldValueRef::Void => FieldValue::Void,
        FieldValueRef::Boolean(b) => FieldValue::Boolean(*b),
        FieldValueRef::I8(i) => FieldValue::I8(*i),
        FieldValueRef::U8(u) => FieldValue::U8(*u),
        FieldValueRef::I16(i) => FieldValue::I16(*i),
        FieldValueRef::U16(u) => FieldValue::U16(*u),
        FieldValueRef::I32(i) => FieldValue::I32(*i),
        FieldValueRef::U32(u) => FieldValue::U32(*u),
        FieldValueRef::I64(i) => FieldValue::I64(*i),
        FieldValueRef::F32(f) => FieldValue::F32(*f),
        FieldValueRef::F64(f) => FieldValue::F64(*f),
        FieldValueRef::Decimal(d) => FieldValue::Decimal(*d),
        FieldValueRef::Text(s) => FieldValue::Text(s.to_str(cx)?.into_owned()),
        FieldValueRef::Bytes(b) => FieldValue::Bytes(b.as_le_slice(cx).to_vec()),
        FieldValueRef::Timestamp(t) => FieldValue::Timestamp(*t),
        FieldValueRef::Array(i) => FieldValue::Array(*i),
        FieldValueRef::Table(i) => FieldValue::Table(*i),
    })
}

//! Whether the AMQP client could parse a delivery, frame by frame, and if
//! not, what in it failed.
//!
//! The verdict is the client's own: each frame goes through amq-protocol's
//! `parse_frame`, the parser lapin runs on every frame it reads, pinned to
//! the same version. Only when that fails does a walk of this module's own
//! name the part at fault (a property, a header name, the routing key) for
//! the reason; when the walk finds nothing, the reason says the frame does
//! not parse. The walk is iterative, as every walk over field values in
//! warren is: a header can nest about 26,000 deep within a frame.
//!
//! It reads frames only; it does not decide what happens to the message.

use amq_protocol::frame::parse_frame;

/// Checks a whole `basic.get-ok` method frame (type, channel, size,
/// payload and frame end). Its exchange and routing key are the short
/// strings a `basic.deliver` would carry.
pub fn get_ok(frame: &[u8]) -> Result<(), String> {
    if parse_frame(frame).is_ok() {
        return Ok(());
    }
    let payload = payload(frame);
    let mut c = Cursor { b: payload, at: 0 };
    // class, method, delivery tag, redelivered
    let walked = c.take(4 + 8 + 1).and_then(|_| {
        for what in ["exchange name", "routing key"] {
            let s = c.short_string(what)?;
            utf8(s, || {
                format!("{what} \"{}\" is not valid UTF-8", escaped(s))
            })?;
        }
        Ok(())
    });
    Err(walked
        .err()
        .unwrap_or_else(|| "the basic.get-ok method frame does not parse".into()))
}

/// Checks a whole content header frame.
pub fn content_header(frame: &[u8]) -> Result<(), String> {
    if parse_frame(frame).is_ok() {
        return Ok(());
    }
    Err(properties(payload(frame))
        .err()
        .unwrap_or_else(|| "the content header frame does not parse".into()))
}

/// The properties of a content header's payload (class, weight, body size,
/// flags, fields), as the client reads them: fields in flag order from the
/// top bit, short strings UTF-8.
fn properties(payload: &[u8]) -> Result<(), String> {
    const SHORT: u8 = 0;
    const OCTET: u8 = 1;
    const TABLE: u8 = 2;
    const STAMP: u8 = 3;
    const FIELDS: [(&str, u8); 14] = [
        ("content-type", SHORT),
        ("content-encoding", SHORT),
        ("headers", TABLE),
        ("delivery-mode", OCTET),
        ("priority", OCTET),
        ("correlation-id", SHORT),
        ("reply-to", SHORT),
        ("expiration", SHORT),
        ("message-id", SHORT),
        ("timestamp", STAMP),
        ("type", SHORT),
        ("user-id", SHORT),
        ("app-id", SHORT),
        ("cluster-id", SHORT),
    ];
    let mut c = Cursor { b: payload, at: 0 };
    c.take(2 + 2 + 8)?;
    let flags = c.u16("property flags")?;
    for (bit, (name, kind)) in FIELDS.iter().enumerate() {
        if flags & (1 << (15 - bit)) == 0 {
            continue;
        }
        let what = format!("property {name}");
        match *kind {
            SHORT => {
                let s = c.short_string(&what)?;
                utf8(s, || format!("{what} is not valid UTF-8"))?;
            }
            OCTET => {
                c.take(1).map_err(|_| format!("{what} is cut short"))?;
            }
            STAMP => {
                c.take(8).map_err(|_| format!("{what} is cut short"))?;
            }
            _ => headers(&mut c)?,
        }
    }
    Ok(())
}

/// The headers table: every name (at any depth) must be UTF-8 and every
/// value of a type the client knows.
fn headers(c: &mut Cursor<'_>) -> Result<(), String> {
    let len = c.u32("the headers table")? as usize;
    let end = c.at + len;
    if end > c.b.len() {
        return Err("the headers table is cut short".into());
    }
    // (end of the table or array, whether it is a table)
    let mut stack = vec![(end, true)];
    // The top-level header being walked, for the reason.
    let mut top = String::new();
    while let Some(&(end, table)) = stack.last() {
        if c.at == end {
            stack.pop();
            continue;
        }
        let within = |top: &str| {
            if top.is_empty() {
                "the headers table".to_string()
            } else {
                format!("header \"{top}\"")
            }
        };
        let cut = |top: &str| format!("{} is cut short", within(top));
        if table {
            let name = c.short_string("a header name").map_err(|_| cut(&top))?;
            if stack.len() == 1 {
                utf8(name, || {
                    format!("header name \"{}\" is not valid UTF-8", escaped(name))
                })?;
                top = String::from_utf8_lossy(name).into_owned();
            } else {
                utf8(name, || {
                    format!(
                        "a table key inside {} (\"{}\") is not valid UTF-8",
                        within(&top),
                        escaped(name)
                    )
                })?;
            }
        }
        let kind = c.take(1).map_err(|_| cut(&top))?[0];
        let fixed = match kind {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'L' | b'l' | b'd' | b'T' => 8,
            b'V' => 0,
            b'S' | b'x' | b'A' | b'F' => {
                let n = c.u32("a value").map_err(|_| cut(&top))? as usize;
                if c.at + n > end {
                    return Err(cut(&top));
                }
                if matches!(kind, b'A' | b'F') {
                    stack.push((c.at + n, kind == b'F'));
                    0
                } else {
                    n
                }
            }
            other => {
                return Err(format!(
                    "{} holds a value of unknown type 0x{other:02x}",
                    within(&top)
                ));
            }
        };
        c.take(fixed).map_err(|_| cut(&top))?;
        if c.at > end {
            return Err(cut(&top));
        }
    }
    Ok(())
}

/// A frame's payload: after type, channel and size, before the frame end.
fn payload(frame: &[u8]) -> &[u8] {
    frame.get(7..frame.len().saturating_sub(1)).unwrap_or(&[])
}

fn utf8(s: &[u8], why: impl FnOnce() -> String) -> Result<(), String> {
    std::str::from_utf8(s).map(|_| ()).map_err(|_| why())
}

/// `s` with bytes outside printable ASCII escaped (`\xff`), at most 64
/// bytes of it: a reason names the bytes without carrying them.
fn escaped(s: &[u8]) -> String {
    let shown = s.get(..64).unwrap_or(s).escape_ascii().to_string();
    if s.len() > 64 {
        format!("{shown}...")
    } else {
        shown
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or_else(|| "the frame is cut short".to_string())?;
        self.at += n;
        Ok(s)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2).map_err(|_| format!("{what} is cut short"))?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4).map_err(|_| format!("{what} is cut short"))?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn short_string(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.take(1).map_err(|_| format!("{what} is cut short"))?[0];
        self.take(n as usize)
            .map_err(|_| format!("{what} is cut short"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 1];
        f.extend((payload.len() as u32).to_be_bytes());
        f.extend(payload);
        f.push(0xCE);
        f
    }

    fn short(out: &mut Vec<u8>, s: &[u8]) {
        out.push(s.len() as u8);
        out.extend(s);
    }

    /// A content header with `flags` and already-encoded `fields`.
    fn header(flags: u16, fields: &[u8]) -> Vec<u8> {
        let mut p = 60u16.to_be_bytes().to_vec();
        p.extend(0u16.to_be_bytes());
        p.extend(5u64.to_be_bytes());
        p.extend(flags.to_be_bytes());
        p.extend(fields);
        frame(2, &p)
    }

    fn with_message_id(id: &[u8]) -> Vec<u8> {
        let mut f = vec![2]; // delivery-mode
        short(&mut f, id);
        header(1 << 12 | 1 << 7, &f)
    }

    fn with_headers(entries: &[u8]) -> Vec<u8> {
        let mut f = (entries.len() as u32).to_be_bytes().to_vec();
        f.extend(entries);
        header(1 << 13, &f)
    }

    fn entry(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        short(&mut e, name);
        e.extend(value);
        e
    }

    fn get_ok_frame(exchange: &[u8], routing_key: &[u8]) -> Vec<u8> {
        let mut p = 60u16.to_be_bytes().to_vec();
        p.extend(71u16.to_be_bytes());
        p.extend(7u64.to_be_bytes());
        p.push(0);
        short(&mut p, exchange);
        short(&mut p, routing_key);
        p.extend(3u32.to_be_bytes());
        frame(1, &p)
    }

    #[test]
    fn well_formed_frames_pass() {
        assert_eq!(content_header(&with_message_id(b"id-1")), Ok(()));
        let value = [b'S', 0, 0, 0, 2, b'o', b'k'];
        assert_eq!(
            content_header(&with_headers(&entry(b"h\xc3\xa9", &value))),
            Ok(())
        );
        assert_eq!(get_ok(&get_ok_frame(b"ex", b"rk")), Ok(()));
    }

    #[test]
    fn a_message_id_that_is_not_utf8_is_named() {
        assert_eq!(
            content_header(&with_message_id(b"\xff\xfe")),
            Err("property message-id is not valid UTF-8".into())
        );
    }

    #[test]
    fn a_content_type_that_is_not_utf8_is_named() {
        let mut f = Vec::new();
        short(&mut f, b"text/\xc3");
        assert_eq!(
            content_header(&header(1 << 15, &f)),
            Err("property content-type is not valid UTF-8".into())
        );
    }

    #[test]
    fn a_header_name_that_is_not_utf8_is_named_with_its_bytes() {
        let e = entry(b"bad\xff", b"V");
        assert_eq!(
            content_header(&with_headers(&e)),
            Err("header name \"bad\\xff\" is not valid UTF-8".into())
        );
    }

    #[test]
    fn a_key_deep_inside_a_header_is_found_without_recursion() {
        // 20,000 nested arrays around a table whose key is not UTF-8: the
        // walk is iterative, so this runs on a test thread's small stack
        // once the client's parser (which recurses) has failed.
        let mut inner = vec![b'F'];
        let t = entry(b"\xfe", b"V");
        inner.extend((t.len() as u32).to_be_bytes());
        inner.extend(t);
        for _ in 0..20_000 {
            let mut n = vec![b'A'];
            n.extend((inner.len() as u32).to_be_bytes());
            n.extend(inner);
            inner = n;
        }
        let frame = with_headers(&entry(b"deep", &inner));
        let err = properties(payload(&frame)).unwrap_err();
        assert_eq!(
            err,
            "a table key inside header \"deep\" (\"\\xfe\") is not valid UTF-8"
        );
    }

    #[test]
    fn an_unknown_value_type_is_named() {
        let e = entry(b"h", b"Z");
        assert_eq!(
            content_header(&with_headers(&e)),
            Err("header \"h\" holds a value of unknown type 0x5a".into())
        );
    }

    #[test]
    fn a_routing_key_that_is_not_utf8_is_named() {
        assert_eq!(
            get_ok(&get_ok_frame(b"ex", b"a.\xff")),
            Err("routing key \"a.\\xff\" is not valid UTF-8".into())
        );
        assert_eq!(
            get_ok(&get_ok_frame(b"\xc0", b"rk")),
            Err("exchange name \"\\xc0\" is not valid UTF-8".into())
        );
    }

    #[test]
    fn a_frame_the_walk_finds_nothing_in_is_still_refused() {
        // A valid message id followed by a byte the client does not
        // expect: parse_frame wants the payload consumed whole.
        let mut f = with_message_id(b"ok");
        let end = f.len() - 1;
        f.insert(end, 0);
        let len = u32::from_be_bytes([f[3], f[4], f[5], f[6]]) + 1;
        f[3..7].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            content_header(&f),
            Err("the content header frame does not parse".into())
        );
    }
}

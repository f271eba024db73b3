//! A raw AMQP 0-9-1 publisher over a `TcpStream`, for the hostile-message
//! tests: it writes whatever property bytes it is given (invalid UTF-8,
//! deep nesting, a header frame at the limit) where a client library
//! would refuse to encode them.
//!
//! It speaks just enough of the protocol to publish with confirms on one
//! channel (PLAIN login as guest); it does not consume. The helpers below
//! build field values by hand.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// One connection with one channel in confirm mode.
#[derive(Debug)]
pub struct RawPublisher {
    stream: TcpStream,
    /// The negotiated largest frame.
    pub frame_max: u32,
}

/// The properties of a message, as raw bytes where a test wants them raw.
#[derive(Debug, Default, Clone)]
pub struct RawProps {
    pub content_type: Option<Vec<u8>>,
    pub message_id: Option<Vec<u8>>,
    /// A field table's contents (entries, without the length prefix).
    pub headers: Option<Vec<u8>>,
}

impl RawPublisher {
    /// Connects to the shared broker as guest.
    pub fn connect() -> RawPublisher {
        let stream = TcpStream::connect("127.0.0.1:5672").expect("connect to RabbitMQ");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut p = RawPublisher {
            stream,
            frame_max: 0,
        };
        p.stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .expect("protocol header");
        p.expect_method(10, 10); // connection.start
        let mut start_ok = method(10, 11);
        start_ok.extend(table_bytes(&[]));
        shortstr(&mut start_ok, b"PLAIN");
        longstr(&mut start_ok, b"\x00guest\x00guest");
        shortstr(&mut start_ok, b"en_US");
        p.send(FRAME_METHOD, 0, &start_ok);
        let tune = p.expect_method(10, 30);
        let channel_max = u16::from_be_bytes([tune[0], tune[1]]);
        p.frame_max = u32::from_be_bytes([tune[2], tune[3], tune[4], tune[5]]);
        let mut tune_ok = method(10, 31);
        tune_ok.extend(channel_max.to_be_bytes());
        tune_ok.extend(p.frame_max.to_be_bytes());
        tune_ok.extend(0u16.to_be_bytes()); // no heartbeats
        p.send(FRAME_METHOD, 0, &tune_ok);
        let mut open = method(10, 40);
        shortstr(&mut open, b"/");
        shortstr(&mut open, b"");
        open.push(0);
        p.send(FRAME_METHOD, 0, &open);
        p.expect_method(10, 41);
        let mut ch = method(20, 10);
        shortstr(&mut ch, b"");
        p.send(FRAME_METHOD, 1, &ch);
        p.expect_method(20, 11);
        let mut confirm = method(85, 10);
        confirm.push(0);
        p.send(FRAME_METHOD, 1, &confirm);
        p.expect_method(85, 11);
        p
    }

    /// Publishes `body` to `queue` through the default exchange and waits
    /// for the broker's confirm. Panics if the broker nacks or closes.
    pub fn publish(&mut self, queue: &str, props: &RawProps, body: &[u8]) {
        let mut m = method(60, 40);
        m.extend(0u16.to_be_bytes());
        shortstr(&mut m, b"");
        shortstr(&mut m, queue.as_bytes());
        m.push(0);
        self.send(FRAME_METHOD, 1, &m);
        let mut h = Vec::new();
        h.extend(60u16.to_be_bytes());
        h.extend(0u16.to_be_bytes());
        h.extend((body.len() as u64).to_be_bytes());
        let mut flags = 0u16;
        let mut fields = Vec::new();
        if let Some(ct) = &props.content_type {
            flags |= 1 << 15;
            shortstr(&mut fields, ct);
        }
        if let Some(headers) = &props.headers {
            flags |= 1 << 13;
            fields.extend((headers.len() as u32).to_be_bytes());
            fields.extend(headers);
        }
        flags |= 1 << 12; // delivery-mode
        fields.push(2);
        if let Some(id) = &props.message_id {
            flags |= 1 << 7;
            shortstr(&mut fields, id);
        }
        h.extend(flags.to_be_bytes());
        h.extend(fields);
        self.send(FRAME_HEADER, 1, &h);
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            self.send(FRAME_BODY, 1, part);
        }
        let ack = self.next_method();
        assert_eq!((ack.0, ack.1), (60, 80), "expected basic.ack, got {ack:?}");
    }

    /// The size of the header frame `publish` writes for `props` and no
    /// body: what must stay within `frame_max`.
    pub fn header_frame_len(props: &RawProps) -> usize {
        let mut n = 8 + 14 + 1;
        if let Some(ct) = &props.content_type {
            n += 1 + ct.len();
        }
        if let Some(h) = &props.headers {
            n += 4 + h.len();
        }
        if let Some(id) = &props.message_id {
            n += 1 + id.len();
        }
        n
    }

    fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut f = Vec::with_capacity(payload.len() + 8);
        f.push(kind);
        f.extend(channel.to_be_bytes());
        f.extend((payload.len() as u32).to_be_bytes());
        f.extend(payload);
        f.push(FRAME_END);
        self.stream.write_all(&f).expect("write a frame");
    }

    /// The next method frame: (class, method, arguments).
    fn next_method(&mut self) -> (u16, u16, Vec<u8>) {
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).expect("read a frame");
            let len = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; len + 1];
            self.stream.read_exact(&mut payload).expect("read a frame");
            payload.pop();
            match head[0] {
                FRAME_METHOD => {
                    let class = u16::from_be_bytes([payload[0], payload[1]]);
                    let id = u16::from_be_bytes([payload[2], payload[3]]);
                    let args = payload[4..].to_vec();
                    if (class, id) == (10, 50) || (class, id) == (20, 40) {
                        panic!(
                            "the broker closed the {}: {}",
                            if class == 10 { "connection" } else { "channel" },
                            String::from_utf8_lossy(&args)
                        );
                    }
                    return (class, id, args);
                }
                FRAME_HEARTBEAT => continue,
                other => panic!("unexpected frame type {other}"),
            }
        }
    }

    fn expect_method(&mut self, class: u16, id: u16) -> Vec<u8> {
        let (c, m, args) = self.next_method();
        assert_eq!((c, m), (class, id), "unexpected method");
        args
    }
}

fn method(class: u16, id: u16) -> Vec<u8> {
    let mut m = class.to_be_bytes().to_vec();
    m.extend(id.to_be_bytes());
    m
}

fn shortstr(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).expect("short string of at most 255 bytes"));
    out.extend(s);
}

fn longstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u32).to_be_bytes());
    out.extend(s);
}

/// A field table (with its length prefix) of already-encoded entries.
pub fn table_bytes(entries: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = entries.concat();
    let mut t = (body.len() as u32).to_be_bytes().to_vec();
    t.extend(body);
    t
}

/// One table entry: `name` and an already-encoded value (type byte first).
pub fn entry(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    shortstr(&mut e, name);
    e.extend(value);
    e
}

/// A long-string value.
pub fn text(s: &[u8]) -> Vec<u8> {
    let mut v = vec![b'S'];
    longstr(&mut v, s);
    v
}

/// A signed 64-bit integer value.
pub fn long_long(i: i64) -> Vec<u8> {
    let mut v = vec![b'l'];
    v.extend(i.to_be_bytes());
    v
}

/// `depth` arrays, each holding the next, around a void: five bytes a
/// level, the densest nesting there is.
pub fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut v = vec![b'V'];
    for _ in 0..depth {
        let mut n = Vec::with_capacity(v.len() + 5);
        n.push(b'A');
        n.extend((v.len() as u32).to_be_bytes());
        n.extend(v);
        v = n;
    }
    v
}

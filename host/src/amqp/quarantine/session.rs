//! The quarantine's own AMQP 0-9-1 session over a plain `TcpStream`: one
//! connection, one channel in confirm mode, and just the methods a sweep
//! needs (queue.declare, basic.get, basic.publish, basic.ack).
//!
//! It writes frames with amq-protocol's generator and reads them raw: the
//! frames of a `basic.get` are kept as bytes, because they may be exactly
//! what the parser refuses. Every read and write times out after the step
//! given to [`Session::open`]. No heartbeats are asked for: a session
//! lasts seconds. It does not judge messages ([`super::check`] does).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use amq_protocol::uri::AMQPUri;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// The only channel the session opens.
const CH: u16 = 1;
/// The largest frame read before `connection.tune` says otherwise.
const FRAME_MAX_BEFORE_TUNE: usize = 1 << 20;

pub struct Session {
    stream: TcpStream,
    frame_max: usize,
}

/// One `basic.get` result: its frames as they came, and its body.
#[derive(Debug)]
pub struct Got {
    pub delivery_tag: u64,
    /// The whole `get-ok` method frame.
    pub method: Vec<u8>,
    /// The whole content header frame.
    pub header: Vec<u8>,
    pub body: Vec<u8>,
}

impl Got {
    /// The property flags and fields as they came.
    pub fn raw_properties(&self) -> &[u8] {
        // Frame header (7), class (2), weight (2), body size (8); the frame end.
        self.header
            .get(7 + 12..self.header.len().saturating_sub(1))
            .unwrap_or(&[])
    }
}

type Result<T> = std::result::Result<T, String>;

impl Session {
    /// Connects and logs in (PLAIN), opens channel 1 and puts it in confirm
    /// mode. The connection is named so operators can tell it apart.
    pub fn open(uri: &AMQPUri, host: &str, step: Duration) -> Result<Session> {
        let auth = &uri.authority;
        let addr = (auth.host.as_str(), auth.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}:{}: {e}", auth.host, auth.port))?
            .next()
            .ok_or_else(|| format!("{}:{} resolves to no address", auth.host, auth.port))?;
        let stream = TcpStream::connect_timeout(&addr, step)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let timeouts = stream
            .set_read_timeout(Some(step))
            .and(stream.set_write_timeout(Some(step)));
        timeouts.map_err(|e| format!("cannot set socket timeouts: {e}"))?;
        let mut s = Session {
            stream,
            frame_max: FRAME_MAX_BEFORE_TUNE,
        };
        s.write(b"AMQP\x00\x00\x09\x01")?;
        s.expect(10, 10, "connection.start")?;
        let mut props = FieldTable::default();
        let name = format!("warren@{host} pid {} quarantine", std::process::id());
        props.insert("connection_name".into(), AMQPValue::LongString(name.into()));
        props.insert("product".into(), AMQPValue::LongString("warren".into()));
        let user = &auth.userinfo;
        let response = format!("\0{}\0{}", user.username, user.password);
        s.send(AMQPClass::Connection(connection::AMQPMethod::StartOk(
            connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            },
        )))?;
        let tune = s.expect(10, 30, "connection.tune")?;
        let channel_max = u16::from_be_bytes([tune[0], tune[1]]);
        let server_max = u32::from_be_bytes([tune[2], tune[3], tune[4], tune[5]]);
        let frame_max = match (server_max, uri.query.frame_max) {
            (0, Some(ours)) => ours,
            (0, None) => 131_072,
            (theirs, Some(ours)) if ours > 0 => theirs.min(ours),
            (theirs, _) => theirs,
        };
        s.send(AMQPClass::Connection(connection::AMQPMethod::TuneOk(
            connection::TuneOk {
                channel_max,
                frame_max,
                heartbeat: 0,
            },
        )))?;
        s.frame_max = frame_max as usize;
        s.send(AMQPClass::Connection(connection::AMQPMethod::Open(
            connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            },
        )))?;
        s.expect(10, 41, "connection.open-ok")?;
        s.send_on(
            CH,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        s.expect(20, 11, "channel.open-ok")?;
        s.send_on(
            CH,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )?;
        s.expect(85, 11, "confirm.select-ok")?;
        Ok(s)
    }

    /// The negotiated largest frame.
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }

    /// Checks that `queue` exists (a passive declare), so a dead-letter
    /// publish has somewhere to go. Passive because the supervisor declared
    /// it, with its kind's arguments (quorum, classic version 2), before it
    /// consumed; a declaration with other arguments would be refused. A
    /// queue an operator deleted since ends the sweep early (404), and the
    /// next connection declares it again.
    pub fn declare(&mut self, queue: &str) -> Result<()> {
        self.send_on(
            CH,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: short(queue)?,
                passive: true,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )?;
        self.expect(50, 11, "queue.declare-ok").map(|_| ())
    }

    /// Takes the next message of `queue` without acking it; `None` when the
    /// queue is empty.
    pub fn get(&mut self, queue: &str) -> Result<Option<Got>> {
        self.send_on(
            CH,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: short(queue)?,
                no_ack: false,
            })),
        )?;
        let method = self.next_method()?;
        match ids(&method) {
            (60, 72) => return Ok(None),
            (60, 71) => {}
            other => return Err(format!("expected basic.get-ok, got method {other:?}")),
        }
        let tag = method
            .get(11..19)
            .ok_or("the basic.get-ok frame is cut short")?;
        let delivery_tag = u64::from_be_bytes(tag.try_into().expect("8 bytes"));
        let header = self.read_frame()?;
        if header[0] != FRAME_HEADER {
            return Err(format!(
                "expected a content header frame, got frame type {}",
                header[0]
            ));
        }
        let size = header
            .get(11..19)
            .ok_or("the content header frame is cut short")?;
        let size = u64::from_be_bytes(size.try_into().expect("8 bytes")) as usize;
        let mut body = Vec::new();
        while body.len() < size {
            let f = self.read_frame()?;
            if f[0] != FRAME_BODY {
                return Err(format!("expected a body frame, got frame type {}", f[0]));
            }
            body.extend_from_slice(&f[7..f.len() - 1]);
        }
        Ok(Some(Got {
            delivery_tag,
            method,
            header,
            body,
        }))
    }

    /// Publishes `body` persistent with `headers` to `queue` through the
    /// default exchange, mandatory, and waits for the broker's confirm.
    pub fn publish_confirmed(
        &mut self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<()> {
        self.send_on(
            CH,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: short(queue)?,
                mandatory: true,
                immediate: false,
            })),
        )?;
        let properties = basic::AMQPProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        self.send_frame(&AMQPFrame::Header(
            CH,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties,
            },
        ))?;
        for part in body.chunks(self.frame_max.saturating_sub(8).max(1)) {
            self.send_frame(&AMQPFrame::Body(CH, part.to_vec()))?;
        }
        let mut returned = false;
        loop {
            let m = self.next_method()?;
            match ids(&m) {
                (60, 80) if returned => {
                    return Err(format!("no queue {queue:?} to take the message"));
                }
                (60, 80) => return Ok(()),
                (60, 120) => {
                    return Err(format!("the broker refused (nacked) the copy to {queue:?}"));
                }
                (60, 50) => {
                    // basic.return: its header and body frames follow.
                    returned = true;
                    let h = self.read_frame()?;
                    let size = h.get(11..19).map_or(0, |b| {
                        u64::from_be_bytes(b.try_into().expect("8 bytes")) as usize
                    });
                    let mut read = 0;
                    while read < size {
                        read += self.read_frame()?.len() - 8;
                    }
                }
                other => {
                    return Err(format!(
                        "expected a publisher confirm, got method {other:?}"
                    ));
                }
            }
        }
    }

    /// Acks one delivery (not `multiple`: the others stay unacked).
    pub fn ack(&mut self, delivery_tag: u64) -> Result<()> {
        self.send_on(
            CH,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple: false,
            })),
        )
    }

    /// Closes the channel (every unacked message returns to its queue) and
    /// the connection; errors are ignored, the socket closes either way.
    pub fn close(mut self) {
        let close = channel::Close {
            reply_code: 200,
            reply_text: "quarantine done".into(),
            class_id: 0,
            method_id: 0,
        };
        if self
            .send_on(CH, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
            .is_ok()
        {
            let _ = self.expect(20, 41, "channel.close-ok");
        }
        let close = connection::Close {
            reply_code: 200,
            reply_text: "quarantine done".into(),
            class_id: 0,
            method_id: 0,
        };
        if self
            .send(AMQPClass::Connection(connection::AMQPMethod::Close(close)))
            .is_ok()
        {
            let _ = self.expect(10, 51, "connection.close-ok");
        }
    }

    fn send(&mut self, m: AMQPClass) -> Result<()> {
        self.send_on(0, m)
    }

    fn send_on(&mut self, channel: u16, m: AMQPClass) -> Result<()> {
        self.send_frame(&AMQPFrame::Method(channel, m))
    }

    fn send_frame(&mut self, f: &AMQPFrame) -> Result<()> {
        let (buf, _) = gen_frame(f)(WriteContext::from(Vec::new()))
            .map_err(|e| format!("cannot encode a frame: {e}"))?
            .into_inner();
        self.write(&buf)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("cannot write to the broker: {e}"))
    }

    /// The next frame, whole (type, channel, size, payload, frame end),
    /// heartbeats skipped.
    fn read_frame(&mut self) -> Result<Vec<u8>> {
        loop {
            let mut frame = vec![0u8; 7];
            self.read(&mut frame)?;
            let len = u32::from_be_bytes([frame[3], frame[4], frame[5], frame[6]]) as usize;
            if len + 8 > self.frame_max.max(4096) {
                return Err(format!(
                    "the broker sent a frame of {} bytes, over frame_max {}",
                    len + 8,
                    self.frame_max
                ));
            }
            frame.resize(7 + len + 1, 0);
            self.read(&mut frame[7..])?;
            if frame[7 + len] != FRAME_END {
                return Err("a frame does not end with the frame-end octet".into());
            }
            if frame[0] != FRAME_HEARTBEAT {
                return Ok(frame);
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        self.stream
            .read_exact(buf)
            .map_err(|e| format!("cannot read from the broker: {e}"))
    }

    /// The next method frame, whole. A close from the broker is an error
    /// naming its reply.
    fn next_method(&mut self) -> Result<Vec<u8>> {
        let f = self.read_frame()?;
        if f[0] != FRAME_METHOD || f.len() < 12 {
            return Err(format!("expected a method frame, got frame type {}", f[0]));
        }
        if matches!(ids(&f), (10, 50) | (20, 40)) {
            let code = f
                .get(11..13)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            let text = f
                .get(13)
                .and_then(|&n| f.get(14..14 + n as usize))
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let what = if ids(&f).0 == 10 {
                "connection"
            } else {
                "channel"
            };
            return Err(format!("the broker closed the {what}: {code} {text}"));
        }
        Ok(f)
    }

    /// The arguments of the next method, which must be `class.method`.
    fn expect(&mut self, class: u16, method: u16, name: &str) -> Result<Vec<u8>> {
        let f = self.next_method()?;
        if ids(&f) != (class, method) {
            return Err(format!("expected {name}, got method {:?}", ids(&f)));
        }
        Ok(f[11..f.len() - 1].to_vec())
    }
}

/// (class, method) of a whole method frame.
fn ids(f: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([f[7], f[8]]),
        u16::from_be_bytes([f[9], f[10]]),
    )
}

fn short(s: &str) -> Result<amq_protocol::types::ShortString> {
    amq_protocol::types::ShortString::try_new(s)
        .map_err(|_| format!("queue name {s:?} is longer than 255 bytes"))
}

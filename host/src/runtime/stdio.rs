//! Guest stdout and stderr: kept in memory up to a cap, then logged by the
//! caller after the call. Writes past the cap are counted and dropped rather
//! than failed, because Rust's `println!` panics (and so traps the guest) when
//! a write fails.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// One capped output buffer, shared between the WASI stream and the host.
#[derive(Clone, Debug)]
pub(crate) struct CappedPipe {
    inner: Arc<Mutex<Captured>>,
    cap: usize,
}

/// What a guest wrote to one stream during one message.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    /// The first `cap` bytes written.
    pub bytes: Vec<u8>,
    /// How many bytes were written past the cap and dropped.
    pub dropped: u64,
}

impl CappedPipe {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured::default())),
            cap,
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().expect("stdio buffer lock poisoned");
        let room = self.cap.saturating_sub(c.bytes.len());
        let keep = room.min(bytes.len());
        c.bytes.extend_from_slice(&bytes[..keep]);
        c.dropped += (bytes.len() - keep) as u64;
    }

    /// Takes what was written so far.
    pub(crate) fn take(&self) -> Captured {
        std::mem::take(&mut *self.inner.lock().expect("stdio buffer lock poisoned"))
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept: the cap is enforced by dropping, not by refusing.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_the_cap_and_counts_the_rest() {
        let pipe = CappedPipe::new(5);
        pipe.push(b"abc");
        pipe.push(b"defgh");
        let c = pipe.take();
        assert_eq!(c.bytes, b"abcde");
        assert_eq!(c.dropped, 3);
        assert!(pipe.take().bytes.is_empty());
    }
}

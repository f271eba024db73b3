//! Receiving a module upload within bounds: one upload at a time per host
//! and at most `admin.max_upload_mb`, so uploads cannot exhaust memory
//! however many arrive. It only receives bytes; the registry validates them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::guard::Refusal;

/// The longest an upload may go without sending a byte: a stalled client
/// must not hold the one upload slot for ever.
const IDLE: Duration = Duration::from_secs(30);

/// The upload slot and the size cap.
#[derive(Debug, Clone)]
pub(super) struct Uploads {
    slot: Arc<Semaphore>,
    cap: usize,
}

/// A received module: its bytes, and the slot, held until the deploy of
/// them is over (their memory is the slot's to bound).
#[derive(Debug)]
pub(super) struct Upload {
    pub bytes: Vec<u8>,
    pub slot: OwnedSemaphorePermit,
}

impl Uploads {
    pub(super) fn new(max_upload_mb: u32) -> Uploads {
        Uploads {
            slot: Arc::new(Semaphore::new(1)),
            cap: (max_upload_mb as usize) << 20,
        }
    }

    fn too_large(&self) -> Refusal {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "module is over the upload limit of {} MiB (admin.max_upload_mb)\n",
                self.cap >> 20
            ),
        )
    }

    /// Takes the upload slot and reads `body` into one buffer, sized from
    /// `Content-Length` up front so it is not copied as it grows. Refuses a
    /// declared or actual size over the cap (413), a second upload while
    /// one is under way (429), and a stalled one (408).
    pub(super) async fn receive(&self, headers: &HeaderMap, body: Body) -> Result<Upload, Refusal> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.cap as u64) {
            return Err(self.too_large());
        }
        let slot = self.slot.clone().try_acquire_owned().map_err(|_| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "another module upload is under way; one is received at a time\n".to_string(),
            )
        })?;
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let mut stream = body.into_data_stream();
        loop {
            let chunk = match tokio::time::timeout(IDLE, stream.next()).await {
                Err(_) => {
                    return Err((
                        StatusCode::REQUEST_TIMEOUT,
                        format!("module upload stalled for {IDLE:?}\n"),
                    ));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("module upload failed: {e}\n"),
                    ));
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            if bytes.len() + chunk.len() > self.cap {
                return Err(self.too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Upload { bytes, slot })
    }
}

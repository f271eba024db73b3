//! Warm instances for `instances = "reuse"`: a handler's idle instances,
//! kept between messages and handed to the next one of the same version.

use std::fmt;

use wasmtime::Store;

use super::Digest;
use super::bindings::Handler;
use super::state::State;

/// Idle warm instances of one handler, for `instances = "reuse"`. Holds at
/// most as many as the handler has messages in flight, so together with
/// the running ones they never exceed the pool's share the permits allow.
#[derive(Default)]
pub struct WarmInstances {
    idle: std::sync::Mutex<Vec<Warm>>,
}

impl fmt::Debug for WarmInstances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.idle.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("WarmInstances").field("idle", &n).finish()
    }
}

pub(super) struct Warm {
    pub(super) store: Store<State>,
    pub(super) handler: Handler,
    pub(super) digest: Digest,
    pub(super) served: u32,
}

impl WarmInstances {
    /// An idle instance of the module with `digest`; idle instances of other
    /// versions (left from before a deploy) are dropped on the way.
    pub(super) fn take(&self, digest: &Digest) -> Option<Warm> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|w| &w.digest == digest);
        idle.pop()
    }

    pub(super) fn put(&self, warm: Warm) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(warm);
    }

    /// Drops every idle instance.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

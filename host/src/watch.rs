//! Deploy on file change: each handler's module file is watched, and a new
//! file there (an atomic rename, or a copy followed by a quiet period)
//! becomes the next version through the same validation as an upload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::context::{HandlerCtx, Shared};
use crate::registry;

/// How long a file must stay unchanged before it is read: a copy in
/// progress fires many events.
const QUIET: Duration = Duration::from_millis(300);

/// Watches every handler's module file until shutdown. The watcher lives as
/// long as the returned value.
pub fn start(
    shared: Arc<Shared>,
    handlers: Vec<Arc<HandlerCtx>>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_create() || event.kind.is_modify())
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    // Watch the directories, not the files: an atomic rename replaces the
    // file (and its inode), which a watch on the file itself would lose.
    let mut dirs: Vec<PathBuf> = handlers
        .iter()
        .filter_map(|h| h.cfg.module.parent().map(PathBuf::from))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        tracing::info!(dir = %dir.display(), "watching for new module files");
    }

    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let mut pending: Vec<Arc<HandlerCtx>> = Vec::new();
        loop {
            let timer = tokio::time::sleep(QUIET);
            let quiet = tokio::select! {
                path = rx.recv() => match path {
                    Some(path) => {
                        for h in handlers.iter().filter(|h| same_file(&h.cfg.module, &path)) {
                            if !pending.iter().any(|p| Arc::ptr_eq(p, h)) {
                                pending.push(h.clone());
                            }
                        }
                        false
                    }
                    None => return,
                },
                _ = timer, if !pending.is_empty() => true,
                _ = shutdown.changed() => return,
            };
            if quiet {
                for h in pending.drain(..) {
                    deploy_file(&shared, &h).await;
                }
            }
        }
    });
    Ok(watcher)
}

fn same_file(configured: &std::path::Path, event: &std::path::Path) -> bool {
    configured == event
        || (configured.file_name() == event.file_name()
            && configured.parent().and_then(|p| p.canonicalize().ok())
                == event.parent().and_then(|p| p.canonicalize().ok()))
}

async fn deploy_file(shared: &Shared, h: &HandlerCtx) {
    let path = &h.cfg.module;
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(handler = %h.cfg.name, path = %path.display(), error = %e, "cannot read the changed module file");
            return;
        }
    };
    match registry::deploy(shared, h, bytes, format!("file {}", path.display())).await {
        Ok(r) if !r.swapped => {}
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(handler = %h.cfg.name, path = %path.display(), error = %e, "changed module file refused; the old version keeps serving")
        }
    }
}

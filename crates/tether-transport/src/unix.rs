//! The Unix-socket transport: JSON lines, the peer is `human` named after its uid, the socket
//! is created with mode 0600 so only its owner (and root) can connect.

use crate::auth::unix_identity;
use crate::driver::drive;
use crate::limits::ConnectionLimits;
use crate::lines::{LineWriter, line_stream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tether_mux::Mux;
use tether_proto::{ErrorBody, MAX_MESSAGE_BYTES, Reason, ReplyFrame};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error("another process is already listening on {0}")]
    InUse(String),
    #[error("socket: {0} exists and is not a socket; refusing to replace it (choose another path)")]
    NotASocket(String),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
}

/// Binds `path`, replacing a stale socket but never a live one, and never anything that is
/// not a socket (as root, `socket = "/etc/passwd"` would otherwise delete it).
pub fn bind(path: &Path) -> Result<UnixListener, UnixError> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(UnixError::InUse(shown));
            }
            std::fs::remove_file(path).map_err(|source| UnixError::Bind {
                path: shown.clone(),
                source,
            })?;
        }
        Ok(_) => return Err(UnixError::NotASocket(shown)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(UnixError::Bind {
                path: shown,
                source,
            });
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| UnixError::Bind {
            path: shown.clone(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| UnixError::Bind {
        path: shown.clone(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        UnixError::Bind {
            path: shown,
            source,
        }
    })?;
    Ok(listener)
}

/// Accepts connections until `closing` fires, then waits (bounded by each connection's
/// close grace) for the open ones to finish. Default connection caps.
pub async fn serve(listener: UnixListener, mux: Mux, closing: CancellationToken) {
    serve_with_limits(
        listener,
        mux,
        Arc::new(ConnectionLimits::default()),
        closing,
    )
    .await
}

/// As [`serve`], with the caps of `limits` (per uid; the total shared with whatever else
/// uses the same limits).
pub async fn serve_with_limits(
    listener: UnixListener,
    mux: Mux,
    limits: Arc<ConnectionLimits>,
    closing: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = closing.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "unix socket accept failed");
                // Likely out of file descriptors: back off briefly instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read unix peer credentials; refusing");
                continue;
            }
        };
        let identity = unix_identity(uid);
        let permit = match limits.acquire(&identity.principal) {
            Ok(p) => p,
            Err(e) => {
                // Said the way every error is said on this transport, then closed; the write
                // is bounded so a peer that never reads cannot hold the accept loop.
                let line = format!(
                    "{}\n",
                    ReplyFrame::err(None, ErrorBody::new(Reason::Overloaded, e.to_string()))
                        .encode()
                );
                tracker.spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        stream.write_all(line.as_bytes()),
                    )
                    .await;
                });
                continue;
            }
        };
        let (conn, rx) = mux.connect(identity);
        let closing = closing.clone();
        tracker.spawn(async move {
            let (read, write) = stream.into_split();
            let inbound = line_stream(BufReader::new(read), MAX_MESSAGE_BYTES);
            drive(
                conn,
                rx,
                inbound,
                LineWriter(BufWriter::new(write)),
                closing,
            )
            .await;
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

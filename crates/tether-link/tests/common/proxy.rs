//! A loopback TCP fault proxy between the agent and the test hub. It forwards bytes both ways
//! and, on command, breaks things the way networks do:
//!
//! * [`FaultProxy::cut_all`] resets every live connection (SO_LINGER 0, so the peers see a
//!   reset and whatever was in flight is lost);
//! * [`FaultProxy::cut_next_after`] arms a cut of the next connection after it has carried a
//!   given number of bytes from the agent (a random point inside a frame);
//! * [`FaultProxy::set_down`] makes the "hub" unreachable: connections are reset at accept;
//! * [`FaultProxy::set_stalled`] stops reading from the agent (a hub that accepts and then
//!   never reads); the hub → agent direction keeps flowing.
//!
//! The listening socket has a small receive buffer (inherited by accepted sockets), so a
//! stalled proxy fills up after a few hundred KiB instead of the tens of MiB loopback
//! autotuning would allow.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

struct Inner {
    upstream: SocketAddr,
    /// Cancelled to cut every current connection; replaced after each cut.
    generation: Mutex<CancellationToken>,
    down: AtomicBool,
    stalled: AtomicBool,
    unstalled: Notify,
    /// Byte offset (agent → hub) at which the next connection is cut; `u64::MAX`: none.
    next_cut_at: AtomicU64,
    accepted: AtomicUsize,
    cuts: AtomicUsize,
    /// Bytes forwarded agent → hub, all connections.
    up_bytes: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("proxy bind");
        let listener = socket.listen(128).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner {
            upstream,
            generation: Mutex::new(CancellationToken::new()),
            down: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            unstalled: Notify::new(),
            next_cut_at: AtomicU64::new(u64::MAX),
            accepted: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
            up_bytes: AtomicU64::new(0),
        });
        let i2 = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((agent, _)) = listener.accept().await else {
                    continue;
                };
                let inner = i2.clone();
                tokio::spawn(async move { proxy_one(inner, agent).await });
            }
        });
        FaultProxy { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Resets every live connection.
    pub fn cut_all(&self) {
        let mut g = self.inner.generation.lock().expect("generation");
        g.cancel();
        *g = CancellationToken::new();
        self.inner.cuts.fetch_add(1, Ordering::AcqRel);
    }

    /// Cuts the next connection once it has carried `bytes` from the agent.
    pub fn cut_next_after(&self, bytes: u64) {
        self.inner.next_cut_at.store(bytes, Ordering::Release);
    }

    /// Disarms [`cut_next_after`](Self::cut_next_after).
    pub fn disarm(&self) {
        self.inner.next_cut_at.store(u64::MAX, Ordering::Release);
    }

    /// While down, connections are reset as soon as they are accepted.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::Release);
    }

    /// While stalled, nothing is read from the agent.
    pub fn set_stalled(&self, stalled: bool) {
        self.inner.stalled.store(stalled, Ordering::Release);
        if !stalled {
            self.inner.unstalled.notify_waiters();
        }
    }

    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::Acquire)
    }

    pub fn cuts(&self) -> usize {
        self.inner.cuts.load(Ordering::Acquire)
    }

    pub fn up_bytes(&self) -> u64 {
        self.inner.up_bytes.load(Ordering::Acquire)
    }
}

async fn proxy_one(inner: Arc<Inner>, agent: TcpStream) {
    let _ = agent.set_zero_linger();
    if inner.down.load(Ordering::Acquire) {
        // Reset at once: the hub is "down".
        return;
    }
    inner.accepted.fetch_add(1, Ordering::AcqRel);
    let cut = inner.generation.lock().expect("generation").child_token();
    let Ok(hub) = TcpStream::connect(inner.upstream).await else {
        return;
    };
    let _ = hub.set_zero_linger();
    let _ = hub.set_nodelay(true);
    let _ = agent.set_nodelay(true);
    let cut_at = inner.next_cut_at.swap(u64::MAX, Ordering::AcqRel);
    let (mut agent_r, mut agent_w) = agent.into_split();
    let (mut hub_r, mut hub_w) = hub.into_split();
    let up = {
        let inner = inner.clone();
        let cut = cut.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut carried = 0u64;
            loop {
                if !wait_unstalled(&inner, &cut).await {
                    return;
                }
                let room = (cut_at.saturating_sub(carried)).min(buf.len() as u64) as usize;
                if room == 0 {
                    cut.cancel();
                    return;
                }
                let n = tokio::select! {
                    _ = cut.cancelled() => return,
                    r = agent_r.read(&mut buf[..room]) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    },
                };
                // A read that was already waiting when the stall began must not slip its
                // bytes through: hold them until the proxy reads again.
                if !wait_unstalled(&inner, &cut).await {
                    return;
                }
                if hub_w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                carried += n as u64;
                inner.up_bytes.fetch_add(n as u64, Ordering::AcqRel);
            }
        }
    };
    let down = {
        let cut = cut.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = tokio::select! {
                    _ = cut.cancelled() => return,
                    r = hub_r.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    },
                };
                let write = agent_w.write_all(&buf[..n]);
                tokio::select! {
                    _ = cut.cancelled() => return,
                    r = write => if r.is_err() { return; },
                }
            }
        }
    };
    // Either direction ending (or a cut) ends both: both sockets are dropped with SO_LINGER 0,
    // so both peers see a reset.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.cancelled() => {}
    }
}

/// Waits while the proxy is stalled; false when the connection is cut meanwhile.
async fn wait_unstalled(inner: &Inner, cut: &CancellationToken) -> bool {
    while inner.stalled.load(Ordering::Acquire) {
        let unstalled = inner.unstalled.notified();
        if !inner.stalled.load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            _ = cut.cancelled() => return false,
            _ = unstalled => {}
        }
    }
    true
}

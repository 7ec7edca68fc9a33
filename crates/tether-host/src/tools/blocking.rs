//! Blocking work of tools (file reads, `statvfs`, name resolution), bounded and cancellable.
//!
//! A tool's blocking call can stall for ever: a read on a hung network file system, a
//! `statvfs` of a dead mount, a resolver that does not answer. A thread stuck in the kernel
//! cannot be stopped, so [`run_blocking`] does the next best thing:
//!
//! - the call returns as soon as its token is cancelled or its deadline passes, with an error
//!   result; the abandoned thread finishes on its own (the work only reads), and the token
//!   handed to the work fires so work that checks it stops early;
//! - at most [`MAX_BLOCKING_JOBS`] tool jobs hold a blocking thread at once, counting
//!   abandoned ones until they really end, so stuck tool jobs can never use up the runtime's
//!   blocking pool that the event log's replay, the spool and the alert history need. A call
//!   past the cap waits for a slot until its deadline (cancellable), then is refused.

use super::ToolOutput;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How many tool jobs may hold a blocking thread at once (tokio's pool has 512).
pub const MAX_BLOCKING_JOBS: usize = 16;

/// Deadline of a tool's blocking work unless the tool sets its own.
pub const BLOCKING_TIMEOUT: Duration = Duration::from_secs(60);

/// Why blocking work gave no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockingError {
    /// The call's token was cancelled.
    Cancelled,
    /// The work did not finish within its deadline and was abandoned.
    TimedOut { what: String, after: Duration },
    /// Every slot stayed taken until the deadline.
    Busy {
        what: String,
        limit: usize,
        waited: Duration,
    },
    /// The work panicked (or the runtime is shutting down).
    Failed { what: String, error: String },
}

impl std::fmt::Display for BlockingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockingError::Cancelled => f.write_str("cancelled"),
            BlockingError::TimedOut { what, after } => write!(
                f,
                "{what} did not finish within {} and was abandoned (a hung file system, \
                 device or resolver?)",
                humantime::format_duration(*after)
            ),
            BlockingError::Busy {
                what,
                limit,
                waited,
            } => write!(
                f,
                "{what} was not started: {limit} earlier tool jobs are still blocked (a hung \
                 file system, device or resolver?) and none finished within {}; try again later",
                humantime::format_duration(*waited)
            ),
            BlockingError::Failed { what, error } => write!(f, "{what} failed: {error}"),
        }
    }
}

impl std::error::Error for BlockingError {}

impl From<BlockingError> for ToolOutput {
    fn from(e: BlockingError) -> ToolOutput {
        ToolOutput::error(e.to_string())
    }
}

/// A cap on blocking jobs in flight. Tools share [`BlockingJobs::tools`].
#[derive(Clone, Debug)]
pub struct BlockingJobs {
    slots: Arc<Semaphore>,
    limit: usize,
}

static TOOL_JOBS: LazyLock<BlockingJobs> = LazyLock::new(|| BlockingJobs::new(MAX_BLOCKING_JOBS));

impl BlockingJobs {
    pub fn new(limit: usize) -> Self {
        BlockingJobs {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// The process-wide cap every tool's blocking work goes through.
    pub fn tools() -> &'static BlockingJobs {
        &TOOL_JOBS
    }

    /// Jobs holding a thread now (abandoned ones included, until they end).
    pub fn in_flight(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// Runs `work` on the blocking pool once a slot is free. Returns when it finishes, when
    /// `cancel` fires, or when `timeout` (waiting for a slot included) has passed, whichever
    /// is first. `what` names the work in error messages. `work` gets a token that fires
    /// once the caller stopped waiting for it.
    pub async fn run<T: Send + 'static>(
        &self,
        what: &str,
        cancel: &CancellationToken,
        timeout: Duration,
        work: impl FnOnce(CancellationToken) -> T + Send + 'static,
    ) -> Result<T, BlockingError> {
        let deadline = tokio::time::Instant::now() + timeout;
        if cancel.is_cancelled() {
            return Err(BlockingError::Cancelled);
        }
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.map_err(|e| BlockingError::Failed {
                what: what.to_owned(),
                error: e.to_string(),
            })?,
            _ = cancel.cancelled() => return Err(BlockingError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Err(BlockingError::Busy {
                what: what.to_owned(),
                limit: self.limit,
                waited: timeout,
            }),
        };
        let job_token = cancel.child_token();
        // Fires the work's token whenever this call stops waiting (also when it is dropped).
        let _stop_work = job_token.clone().drop_guard();
        let task = tokio::task::spawn_blocking(move || {
            // The slot is given back only when the work really ends.
            let _slot = slot;
            work(job_token)
        });
        tokio::select! {
            joined = task => joined.map_err(|e| BlockingError::Failed {
                what: what.to_owned(),
                error: e.to_string(),
            }),
            _ = cancel.cancelled() => Err(BlockingError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => Err(BlockingError::TimedOut {
                what: what.to_owned(),
                after: timeout,
            }),
        }
    }
}

/// [`BlockingJobs::run`] on the tools' shared cap.
pub async fn run_blocking<T: Send + 'static>(
    what: &str,
    cancel: &CancellationToken,
    timeout: Duration,
    work: impl FnOnce(CancellationToken) -> T + Send + 'static,
) -> Result<T, BlockingError> {
    BlockingJobs::tools().run(what, cancel, timeout, work).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// Longest a call that should return at once may take.
    const PROMPT: Duration = Duration::from_secs(10);

    /// Work that blocks its thread until the test releases it (dropping the sender).
    fn stuck() -> (
        mpsc::Sender<()>,
        impl FnOnce(CancellationToken) + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel::<()>();
        (tx, move |_| {
            let _ = rx.recv();
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stuck_work_returns_on_cancel_and_on_its_deadline() {
        let jobs = BlockingJobs::new(4);
        let cancel = CancellationToken::new();
        let (release, work) = stuck();
        let call = {
            let jobs = jobs.clone();
            let cancel = cancel.clone();
            tokio::spawn(
                async move { jobs.run("the test read", &cancel, PROMPT * 100, work).await },
            )
        };
        while jobs.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        let out = tokio::time::timeout(PROMPT, call)
            .await
            .expect("a cancelled call waited for its stuck thread")
            .expect("task");
        assert_eq!(out, Err(BlockingError::Cancelled));
        // The abandoned thread still holds its slot until it really ends.
        assert_eq!(jobs.in_flight(), 1);

        let (release2, work) = stuck();
        let started = Instant::now();
        let out = jobs
            .run(
                "the test read",
                &CancellationToken::new(),
                Duration::from_millis(50),
                work,
            )
            .await;
        assert!(started.elapsed() < PROMPT);
        let err = out.expect_err("stuck work finished");
        assert!(matches!(err, BlockingError::TimedOut { .. }));
        assert!(
            err.to_string()
                .starts_with("the test read did not finish within 50ms"),
            "{err}"
        );
        drop((release, release2));
        tokio::time::timeout(PROMPT, async {
            while jobs.in_flight() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("released threads gave their slots back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cap_keeps_the_blocking_pool_free_and_refuses_past_it() {
        let jobs = BlockingJobs::new(3);
        let mut releases = Vec::new();
        let mut calls = Vec::new();
        // Far more stuck calls than the cap: only 3 threads are ever taken.
        for _ in 0..600 {
            let (release, work) = stuck();
            releases.push(release);
            let jobs = jobs.clone();
            calls.push(tokio::spawn(async move {
                jobs.run("stuck", &CancellationToken::new(), PROMPT * 100, work)
                    .await
            }));
        }
        while jobs.in_flight() < 3 {
            tokio::task::yield_now().await;
        }
        let probe = tokio::time::timeout(PROMPT, tokio::task::spawn_blocking(|| 7)).await;
        assert!(matches!(probe, Ok(Ok(7))), "the blocking pool is starved");

        // A call past the cap gives up at its deadline with a clear message…
        let busy = jobs
            .run(
                "read_file",
                &CancellationToken::new(),
                Duration::from_millis(50),
                |_| (),
            )
            .await
            .expect_err("ran past the cap");
        assert!(
            busy.to_string()
                .starts_with("read_file was not started: 3 earlier tool jobs are still blocked"),
            "{busy}"
        );
        // …or at once when cancelled while waiting.
        let cancel = CancellationToken::new();
        let waiting = {
            let jobs = jobs.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { jobs.run("x", &cancel, PROMPT * 100, |_| ()).await })
        };
        cancel.cancel();
        let out = tokio::time::timeout(PROMPT, waiting)
            .await
            .expect("a cancelled wait for a slot did not return")
            .expect("task");
        assert_eq!(out, Err(BlockingError::Cancelled));

        // Released, every queued call runs in turn.
        drop(releases);
        for call in calls {
            let out = tokio::time::timeout(PROMPT, call)
                .await
                .expect("a queued call never ran")
                .expect("task");
            assert_eq!(out, Ok(()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_work_is_told_when_its_caller_stops_waiting() {
        let jobs = BlockingJobs::new(2);
        let (told_tx, told_rx) = mpsc::channel::<()>();
        let out = jobs
            .run(
                "grep",
                &CancellationToken::new(),
                Duration::from_millis(20),
                move |token| {
                    // Cooperative work: stops once its token fires.
                    while !token.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let _ = told_tx.send(());
                },
            )
            .await;
        assert!(matches!(out, Err(BlockingError::TimedOut { .. })));
        tokio::task::spawn_blocking(move || told_rx.recv_timeout(PROMPT))
            .await
            .expect("join")
            .expect("the work's token never fired");
    }
}

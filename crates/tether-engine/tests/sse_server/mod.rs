//! A scripted OpenAI-compatible chat-completions server on 127.0.0.1:0 for tests.
//!
//! Each request is answered by the next [`Reply`] of the script: a status, headers, and a
//! body made of [`Step`]s (SSE `data:` events, raw bytes, delays, a cut connection, a stall).
//! Every request body and its `Authorization` header are recorded for assertions.
#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_engine::model::{ModelChunk, ModelError, ModelStream};
use tether_engine::openai::{OpenAiConfig, OpenAiEndpoint, OpenAiProvider, RetryPolicy};
use tokio::sync::Notify;

/// One piece of a response body.
#[derive(Clone, Debug)]
pub enum Step {
    /// `data: {json}\n\n`
    Data(String),
    /// Text as it is.
    Raw(String),
    /// Bytes as they are (may split a UTF-8 character).
    Bytes(Vec<u8>),
    Delay(Duration),
    /// Abort the connection (the chunked body never ends properly).
    Cut,
    /// Send nothing more, forever.
    Stall,
    /// Send this event every interval, forever.
    Repeat(String, Duration),
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub steps: Vec<Step>,
}

impl Reply {
    /// A 200 event stream.
    pub fn sse(steps: impl IntoIterator<Item = Step>) -> Self {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            steps: steps.into_iter().collect(),
        }
    }

    /// A JSON document with this status.
    pub fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            steps: vec![Step::Raw(body.to_string())],
        }
    }

    /// An OpenAI-style error document.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(
            status,
            json!({"error": {"message": message, "type": "test_error", "code": null}}),
        )
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A whole streamed text answer: role, the parts, finish, usage, [DONE].
    pub fn text(parts: &[&str]) -> Self {
        let mut steps = vec![role()];
        steps.extend(parts.iter().map(|p| text(p)));
        steps.extend([finish("stop"), usage(10, parts.len() as u64), done()]);
        Self::sse(steps)
    }
}

fn chunk_with(choices: Value) -> Step {
    Step::Data(
        json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "test-model",
            "choices": choices,
        })
        .to_string(),
    )
}

/// A chunk carrying `delta`.
pub fn delta(delta: Value) -> Step {
    chunk_with(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]))
}

pub fn role() -> Step {
    delta(json!({"role": "assistant", "content": ""}))
}

pub fn text(s: &str) -> Step {
    delta(json!({"content": s}))
}

pub fn reasoning(s: &str) -> Step {
    delta(json!({"reasoning_content": s}))
}

/// The first fragment of a tool call: index, id, name, empty arguments.
pub fn call_start(index: u32, id: &str, name: &str) -> Step {
    delta(
        json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                  "function": {"name": name, "arguments": ""}}]}),
    )
}

/// A later fragment of a tool call: only index and a piece of the arguments.
pub fn call_args(index: u32, fragment: &str) -> Step {
    delta(json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
}

pub fn finish(reason: &str) -> Step {
    chunk_with(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}]))
}

/// The usage chunk sent after the finish when `stream_options.include_usage` is set.
pub fn usage(prompt: u64, completion: u64) -> Step {
    Step::Data(
        json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "test-model",
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        })
        .to_string(),
    )
}

pub fn done() -> Step {
    Step::Raw("data: [DONE]\n\n".into())
}

/// What the server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub body: Value,
    /// The body as sent (to see duplicate keys the parsed value hides).
    pub raw: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
}

/// Looks at a request body before the script does: `Some(reply)` answers the request with
/// that reply and leaves the script as it was (a server's rules about requests, e.g. what a
/// real server rejects).
pub type Judge = Arc<dyn Fn(&Value) -> Option<Reply> + Send + Sync>;

struct Inner {
    judge: Option<Judge>,
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    /// Response bodies dropped by the server (finished, failed, or the client went away).
    bodies_dropped: AtomicUsize,
    dropped: Notify,
}

pub struct Server {
    /// `http://127.0.0.1:port/v1`
    pub base_url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(replies: Vec<Reply>) -> Server {
        Self::start_inner(None, replies).await
    }

    /// A server that lets `judge` answer a request before the script does.
    pub async fn start_judged(judge: Judge, replies: Vec<Reply>) -> Server {
        Self::start_inner(Some(judge), replies).await
    }

    async fn start_inner(judge: Option<Judge>, replies: Vec<Reply>) -> Server {
        let inner = Arc::new(Inner {
            judge,
            replies: Mutex::new(replies.into()),
            requests: Mutex::new(Vec::new()),
            bodies_dropped: AtomicUsize::new(0),
            dropped: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let router = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Server {
            base_url: format!("http://{addr}/v1"),
            inner,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().expect("lock").clone()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.requests().into_iter().map(|r| r.body).collect()
    }

    pub fn request_count(&self) -> usize {
        self.inner.requests.lock().expect("lock").len()
    }

    /// Waits (at most 10 s of real time) until `n` response bodies were dropped.
    pub async fn wait_bodies_dropped(&self, n: usize) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.dropped.notified();
                if self.inner.bodies_dropped.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_ok()
    }

    /// An endpoint pointing here, asking for `test-model`.
    pub fn endpoint(&self) -> OpenAiEndpoint {
        OpenAiEndpoint::new(&self.base_url, "test-model")
    }
}

struct DropGuard(Arc<Inner>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.bodies_dropped.fetch_add(1, Ordering::SeqCst);
        self.0.dropped.notify_waiters();
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let judged = inner.judge.as_ref().and_then(|judge| judge(&parsed));
    inner.requests.lock().expect("lock").push(Recorded {
        body: parsed,
        raw: String::from_utf8_lossy(&body).into_owned(),
        authorization: header("authorization"),
        accept: header("accept"),
    });
    let reply = judged.or_else(|| inner.replies.lock().expect("lock").pop_front());
    let Some(reply) = reply else {
        return Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .body(Body::from("the test script has no reply for this request"))
            .expect("response");
    };
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name, value);
    }
    let guard = DropGuard(Arc::clone(&inner));
    let body = futures_util::stream::unfold(
        (reply.steps.into_iter(), None::<(String, Duration)>, guard),
        |(mut steps, mut repeat, guard)| async move {
            loop {
                if let Some((event, every)) = &repeat {
                    tokio::time::sleep(*every).await;
                    let bytes = Bytes::from(format!("data: {event}\n\n"));
                    return Some((Ok(bytes), (steps, repeat, guard)));
                }
                match steps.next()? {
                    Step::Data(s) => {
                        let bytes = Bytes::from(format!("data: {s}\n\n"));
                        return Some((Ok(bytes), (steps, repeat, guard)));
                    }
                    Step::Raw(s) => return Some((Ok(Bytes::from(s)), (steps, repeat, guard))),
                    Step::Bytes(b) => return Some((Ok(Bytes::from(b)), (steps, repeat, guard))),
                    Step::Delay(d) => tokio::time::sleep(d).await,
                    Step::Cut => {
                        let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
                        return Some((Err(e), (steps, repeat, guard)));
                    }
                    Step::Stall => futures_util::future::pending::<()>().await,
                    Step::Repeat(event, every) => repeat = Some((event, every)),
                }
            }
        },
    );
    builder.body(Body::from_stream(body)).expect("response")
}

/// A provider for `endpoints` with quick retries (3 tries, 1–10 ms apart).
pub fn provider(endpoints: Vec<OpenAiEndpoint>) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig {
        endpoints,
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(10),
        },
        idle_timeout: OpenAiConfig::DEFAULT_IDLE_TIMEOUT,
        request_timeout: Duration::from_secs(5),
    })
    .expect("valid provider config")
}

/// Everything a stream yields: the chunks, and the error that ended it (if any). Items after
/// an error are a bug and fail the test.
pub async fn collect(mut stream: ModelStream) -> (Vec<ModelChunk>, Option<ModelError>) {
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(c) => chunks.push(c),
            Err(e) => {
                assert!(
                    stream.next().await.is_none(),
                    "the stream went on after an error"
                );
                return (chunks, Some(e));
            }
        }
    }
    (chunks, None)
}

/// [`collect`] bounded by 10 s of real time, so a hang fails the test instead of blocking it.
pub async fn collect_bounded(stream: ModelStream) -> (Vec<ModelChunk>, Option<ModelError>) {
    tokio::time::timeout(Duration::from_secs(10), collect(stream))
        .await
        .expect("the model stream hung")
}

/// The concatenated text chunks.
pub fn text_of(chunks: &[ModelChunk]) -> String {
    chunks
        .iter()
        .filter_map(|c| match c {
            ModelChunk::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

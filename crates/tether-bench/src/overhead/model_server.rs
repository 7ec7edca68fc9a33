//! A stand-in model: an axum server on `127.0.0.1:0` answering `POST /v1/chat/completions`
//! in the chat-completions streaming wire format (`data: {chunk}\n\n` …, `data: [DONE]`).
//!
//! Each request takes the [`Plan`] armed last: a role chunk, then `chunks` content chunks paced
//! `interval` apart (each one's text is its sequence number), then the finish chunk, the usage
//! chunk and `[DONE]` together. A content chunk's send instant is stamped when the body stream
//! hands its bytes to hyper, which writes them to the socket in the same poll (hyper flushes
//! what the body yielded before it waits again), so the stamp is "just before the socket"
//! short of hyper's chunked-encoding framing. `TCP_NODELAY` is set, as on any real server that
//! streams tokens.

use super::timeline::{Clock, Stamps, chunk_text, pacer};
use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Response, StatusCode, header};
use axum::routing::post;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the next request streams.
pub struct Plan {
    pub chunks: u64,
    pub interval: Duration,
    /// Filled with each content chunk's send instant.
    pub sent: Arc<Stamps>,
    pub clock: Clock,
}

type Armed = Arc<Mutex<Option<Plan>>>;

pub struct ModelServer {
    /// `http://127.0.0.1:port/v1`
    pub base_url: String,
    armed: Armed,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ModelServer {
    pub async fn start() -> anyhow::Result<ModelServer> {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the model server")?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let armed: Armed = Arc::new(Mutex::new(None));
        let router = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(armed.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                crate::client::note(&format!("model server failed: {e}"));
            }
        });
        Ok(ModelServer {
            base_url: format!("http://{addr}/v1"),
            armed,
            task,
        })
    }

    /// The next request streams `plan`.
    pub fn arm(&self, plan: Plan) {
        if let Ok(mut a) = self.armed.lock() {
            *a = Some(plan);
        }
    }
}

const PREFIX: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","system_fingerprint":null,"choices":"#;

/// `data: {chunk with this delta}\n\n`
fn event(delta: &str, finish: &str) -> String {
    format!(
        "data: {PREFIX}[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
    )
}

fn role() -> Bytes {
    Bytes::from(event(r#"{"role":"assistant","content":""}"#, "null"))
}

/// The content chunk carrying `seq`.
pub fn content(seq: u64) -> Bytes {
    Bytes::from(event(
        &format!(r#"{{"content":"{}"}}"#, chunk_text(seq)),
        "null",
    ))
}

fn tail(chunks: u64) -> Bytes {
    let mut s = event("{}", r#""stop""#);
    s.push_str(&format!(
        "data: {PREFIX}[],\"usage\":{{\"prompt_tokens\":20,\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\n",
        chunks + 20
    ));
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

enum Phase {
    Role,
    Content,
    Done,
}

async fn handle(State(armed): State<Armed>, _request: Bytes) -> Response<Body> {
    let plan = armed.lock().ok().and_then(|mut a| a.take());
    let refuse = |status: StatusCode, message: &str| {
        let mut r = Response::new(Body::from(format!(
            r#"{{"error":{{"message":"{message}","type":"bench"}}}}"#
        )));
        *r.status_mut() = status;
        r
    };
    // 400, not 5xx: the provider must not retry a request the bench did not expect.
    let Some(plan) = plan else {
        return refuse(StatusCode::BAD_REQUEST, "no benchmark run is armed");
    };
    let rx = match pacer(plan.chunks, plan.interval, plan.clock) {
        Ok(rx) => rx,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("cannot start the pacer: {e}"),
            );
        }
    };
    let body = futures_util::stream::unfold(
        (Phase::Role, rx, plan),
        |(phase, mut rx, plan)| async move {
            match phase {
                Phase::Role => Some((Ok::<Bytes, Infallible>(role()), (Phase::Content, rx, plan))),
                Phase::Content => match rx.recv().await {
                    Some((seq, _)) => {
                        let bytes = content(seq);
                        plan.sent.set(seq, plan.clock.now_ns());
                        Some((Ok(bytes), (Phase::Content, rx, plan)))
                    }
                    None => {
                        let bytes = tail(plan.chunks);
                        Some((Ok(bytes), (Phase::Done, rx, plan)))
                    }
                },
                Phase::Done => None,
            }
        },
    );
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// Every sequence number in `bytes` (a read of the event stream), in order.
pub fn numbers_in(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    const KEY: &[u8] = br#""content":""#;
    let mut rest = bytes;
    std::iter::from_fn(move || {
        loop {
            let at = rest.windows(KEY.len()).position(|w| w == KEY)?;
            rest = &rest[at + KEY.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                continue;
            }
            let n = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
            rest = &rest[digits..];
            if n.is_some() {
                return n;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_and_carry_their_number() {
        for bytes in [role(), content(42), tail(3)] {
            let text = std::str::from_utf8(&bytes).expect("utf-8");
            for line in text.lines().filter(|l| !l.is_empty()) {
                let data = line.strip_prefix("data: ").expect("a data line");
                if data != "[DONE]" {
                    serde_json::from_str::<serde_json::Value>(data).expect("json");
                }
            }
        }
        let two = [content(7), role(), content(1234)].concat();
        assert_eq!(numbers_in(&two).collect::<Vec<_>>(), vec![7, 1234]);
    }
}

//! One model call: send, retry, fail over, read the stream, assemble the answer.
//!
//! The call is a state machine driven by the stream the caller polls (`stream::unfold`), so it
//! owns the HTTP response: dropping the stream drops the connection, a backoff sleep, or
//! anything else in flight. Nothing is spawned.

use super::config::RetryPolicy;
use super::sse::SseDecoder;
use super::wire::{ChunkWire, DeltaWire, RequestBody, ToolCallDelta, error_message_in};
use super::{Shared, Target};
use crate::context;
use crate::model::{Message, ModelChunk, ModelError, ModelRequest, ModelStream, ToolCallRequest};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tether_proto::Usage;
use tokio::time::{Instant, Sleep};

/// The largest single stream event (and the largest non-streamed answer) accepted.
pub(crate) const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;
/// How much of an error response is read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How much of an error message is shown.
const MAX_ERROR_MESSAGE: usize = 600;

pub(crate) const ENDED_EARLY: &str = "the model's stream ended before it finished";
/// A 200 answer that carried nothing: no text, reasoning, tool call or finish reason.
/// llama-cpp-python does this when generating fails after the response started (the stream
/// just ends, or only `[DONE]` comes when the next request interrupts it).
pub(crate) const NO_ANSWER: &str = "the server accepted the request (HTTP 200) but sent no answer";
/// Added to [`NO_ANSWER`] for a streamed request.
const NO_ANSWER_HINT: &str = " (a server that cannot stream some answers may need stream = false)";

pub(crate) fn start(shared: Arc<Shared>, request: ModelRequest) -> ModelStream {
    let call = Call {
        shared,
        request,
        endpoint: 0,
        attempt: 1,
        tries: 0,
        body: None,
        prompt_estimate: 0,
        phase: Phase::Start,
        answer: Answer::default(),
        pending: VecDeque::new(),
        delivered: false,
    };
    futures_util::stream::unfold(call, |mut call| async move {
        let item = call.next().await?;
        Some((item, call))
    })
    .boxed()
}

struct Call {
    shared: Arc<Shared>,
    request: ModelRequest,
    /// Index of the endpoint being tried.
    endpoint: usize,
    /// The try on this endpoint, from 1.
    attempt: u32,
    /// Tries on all endpoints.
    tries: u32,
    /// The encoded request for the current endpoint (kept for retries).
    body: Option<Bytes>,
    /// The estimated prompt tokens of `body`, for servers that report no usage.
    prompt_estimate: u64,
    phase: Phase,
    answer: Answer,
    /// Chunks decoded but not yet handed out.
    pending: VecDeque<ModelChunk>,
    /// A chunk was handed out: from now on nothing is retried.
    delivered: bool,
}

enum Phase {
    Start,
    Reading(Box<Reader>),
    Done,
}

struct Reader {
    response: reqwest::Response,
    decoder: SseDecoder,
    idle: Pin<Box<Sleep>>,
    /// `Some` when the server answered with a JSON document instead of an event stream.
    json: Option<Vec<u8>>,
    eof: bool,
}

/// A failed try and whether another try could help.
struct Failure {
    error: ModelError,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn retryable(error: ModelError) -> Self {
        Failure {
            error,
            retryable: true,
            retry_after: None,
        }
    }

    fn fatal(error: ModelError) -> Self {
        Failure {
            error,
            retryable: false,
            retry_after: None,
        }
    }
}

enum Step {
    Continue,
    Finished,
}

impl Call {
    async fn next(&mut self) -> Option<Result<ModelChunk, ModelError>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                self.delivered = true;
                return Some(Ok(chunk));
            }
            let step = match &mut self.phase {
                Phase::Done => return None,
                Phase::Start => self.open().await.map(|()| Step::Continue),
                Phase::Reading(reader) => {
                    read(
                        reader,
                        &mut self.answer,
                        &mut self.pending,
                        self.shared.idle_timeout,
                    )
                    .await
                }
            };
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Finished) => self.phase = Phase::Done,
                Err(failure) => {
                    if let Some(error) = self.fail(failure).await {
                        self.phase = Phase::Done;
                        self.pending.clear();
                        return Some(Err(error));
                    }
                }
            }
        }
    }

    /// Sends the request to the current endpoint and, on a success status, starts reading.
    async fn open(&mut self) -> Result<(), Failure> {
        let shared = Arc::clone(&self.shared);
        let target = &shared.endpoints[self.endpoint];
        let body = match &self.body {
            Some(b) => b.clone(),
            None => {
                let (b, estimate) =
                    encode_request(target, &self.request).map_err(Failure::fatal)?;
                self.body = Some(b.clone());
                self.prompt_estimate = estimate;
                b
            }
        };
        let streamed = target.endpoint.stream;
        self.answer.prompt_estimate = self.prompt_estimate;
        self.answer.streamed = streamed;
        self.tries += 1;
        tracing::debug!(url = %target.url, attempt = self.attempt, "model request");
        let mut request = shared
            .client
            .post(&target.url)
            .header(CONTENT_TYPE, "application/json")
            .header(
                ACCEPT,
                if streamed {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(body);
        if let Some(key) = &target.key {
            request = request.bearer_auth(key);
        }
        let idle = shared.idle_timeout;
        let response = match tokio::time::timeout(idle, request.send()).await {
            Err(_) => return Err(Failure::retryable(ModelError::Idle(whole_seconds(idle)))),
            Ok(Err(e)) if e.is_builder() => {
                return Err(Failure::fatal(ModelError::Other(format!(
                    "cannot build the request to {}: {}",
                    target.url,
                    tether_host::text::error_chain(&e)
                ))));
            }
            Ok(Err(e)) => {
                return Err(Failure::retryable(ModelError::Connect(
                    tether_host::text::error_chain(&e),
                )));
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let body = read_capped(response, idle, MAX_ERROR_BODY).await;
            let mut message = error_message(&body, status);
            if status == StatusCode::NOT_FOUND {
                message.push_str(&format!(
                    " (tether posted to {}; check base_url and model)",
                    target.url
                ));
            }
            return Err(Failure {
                error: ModelError::Http {
                    status: status.as_u16(),
                    message,
                },
                retryable: is_retryable_status(status),
                retry_after,
            });
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::trim_start)
            .unwrap_or("");
        // What the server says it sent; without a word, what was asked for.
        let is_json = content_type.starts_with("application/json")
            || (!streamed && !content_type.starts_with("text/event-stream"));
        self.phase = Phase::Reading(Box::new(Reader {
            response,
            decoder: SseDecoder::new(MAX_EVENT_BYTES),
            idle: Box::pin(tokio::time::sleep(idle)),
            json: is_json.then(Vec::new),
            eof: false,
        }));
        Ok(())
    }

    /// Decides what a failed try means: `None` to try again (after a backoff, or on the next
    /// endpoint), or the error that ends the stream.
    async fn fail(&mut self, failure: Failure) -> Option<ModelError> {
        let shared = Arc::clone(&self.shared);
        let target = &shared.endpoints[self.endpoint];
        if self.delivered {
            // Trying again would repeat what the caller already has.
            return Some(match failure.error {
                e @ (ModelError::Idle(_) | ModelError::Stream(_) | ModelError::Other(_)) => e,
                other => ModelError::Stream(other.to_string()),
            });
        }
        if !failure.retryable {
            return Some(failure.error);
        }
        self.answer = Answer::default();
        self.phase = Phase::Start;
        if self.attempt < shared.retry.attempts {
            let delay = backoff(&shared.retry, self.attempt, failure.retry_after);
            tracing::warn!(
                url = %target.url,
                attempt = self.attempt,
                of = shared.retry.attempts,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "model call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            self.attempt += 1;
            return None;
        }
        if let Some(next) = shared.endpoints.get(self.endpoint + 1) {
            tracing::warn!(
                url = %target.url,
                next = %next.url,
                error = %failure.error,
                "model endpoint failed; trying the next one"
            );
            self.endpoint += 1;
            self.attempt = 1;
            self.body = None;
            return None;
        }
        Some(gave_up(failure.error, self.tries, shared.endpoints.len()))
    }
}

/// Reads until the next chunk is decoded, the answer finishes, or the try fails.
async fn read(
    reader: &mut Reader,
    answer: &mut Answer,
    pending: &mut VecDeque<ModelChunk>,
    idle: Duration,
) -> Result<Step, Failure> {
    if reader.json.is_none() {
        loop {
            match reader.decoder.next_event() {
                Err(e) => return Err(Failure::fatal(ModelError::Stream(e.to_string()))),
                Ok(false) => break,
                Ok(true) => {
                    let data = reader.decoder.data();
                    if data.trim_ascii() == b"[DONE]" {
                        return answer.finish(pending).map(|()| Step::Finished);
                    }
                    let chunk: ChunkWire<'_> = serde_json::from_slice(data).map_err(|e| {
                        Failure::fatal(ModelError::Stream(format!(
                            "cannot decode a stream event: {e}"
                        )))
                    })?;
                    if let Some(error) = &chunk.error {
                        let message = error_message_in(&serde_json::json!({ "error": error }))
                            .unwrap_or_else(|| error.to_string());
                        return Err(Failure::fatal(ModelError::Stream(format!(
                            "the model reported an error: {}",
                            clip(&message, MAX_ERROR_MESSAGE)
                        ))));
                    }
                    answer.apply(chunk, pending);
                    if !pending.is_empty() {
                        return Ok(Step::Continue);
                    }
                }
            }
        }
    }
    if reader.eof {
        if let Some(document) = reader.json.take() {
            if document.trim_ascii().is_empty() {
                return Err(answer.no_answer(None));
            }
            let chunk: ChunkWire<'_> = serde_json::from_slice(&document).map_err(|e| {
                Failure::fatal(ModelError::Stream(format!(
                    "cannot decode the model's answer: {e}"
                )))
            })?;
            if let Some(error) = &chunk.error {
                let message = error_message_in(&serde_json::json!({ "error": error }))
                    .unwrap_or_else(|| error.to_string());
                return Err(Failure::fatal(ModelError::Stream(format!(
                    "the model reported an error: {}",
                    clip(&message, MAX_ERROR_MESSAGE)
                ))));
            }
            answer.apply(chunk, pending);
            return answer.finish(pending).map(|()| Step::Finished);
        }
        if answer.finished {
            return answer.finish(pending).map(|()| Step::Finished);
        }
        if answer.is_empty() {
            return Err(answer.no_answer(None));
        }
        return Err(Failure::retryable(ModelError::Stream(ENDED_EARLY.into())));
    }
    let next = tokio::select! {
        biased;
        r = reader.response.chunk() => Some(r),
        () = reader.idle.as_mut() => None,
    };
    match next {
        Some(Ok(Some(bytes))) => {
            reader.idle.as_mut().reset(Instant::now() + idle);
            tracing::trace!(bytes = bytes.len(), "model stream read");
            match &mut reader.json {
                Some(document) => {
                    if document.len() + bytes.len() > MAX_EVENT_BYTES {
                        return Err(Failure::fatal(ModelError::Stream(format!(
                            "the model's answer is larger than {MAX_EVENT_BYTES} bytes"
                        ))));
                    }
                    document.extend_from_slice(&bytes);
                }
                None => reader
                    .decoder
                    .push(&bytes)
                    .map_err(|e| Failure::fatal(ModelError::Stream(e.to_string())))?,
            }
            Ok(Step::Continue)
        }
        Some(Ok(None)) => {
            reader.eof = true;
            if reader.json.is_none() {
                reader.decoder.push_end();
            }
            Ok(Step::Continue)
        }
        // The answer is complete; what is missing is the end marker or the usage.
        _ if answer.finished => answer.finish(pending).map(|()| Step::Finished),
        Some(Err(e)) => {
            let broke = format!(
                "the connection broke: {}",
                tether_host::text::error_chain(&e)
            );
            Err(if answer.is_empty() {
                answer.no_answer(Some(&broke))
            } else {
                Failure::retryable(ModelError::Stream(broke))
            })
        }
        None => Err(Failure::retryable(ModelError::Idle(whole_seconds(idle)))),
    }
}

/// The answer being assembled: tool calls arrive in fragments and are handed out whole.
#[derive(Default)]
struct Answer {
    calls: Vec<PartialCall>,
    /// Any `tool_calls` fragment came: a legacy `function_call` beside them is the same call.
    saw_tool_calls: bool,
    /// The legacy `function_call`, assembled like a tool call.
    function_call: Option<PartialCall>,
    /// A `finish_reason` was seen: the answer is complete even if the stream breaks now.
    finished: bool,
    calls_emitted: bool,
    /// Text or reasoning was handed out.
    produced: bool,
    /// The request asked for a stream.
    streamed: bool,
    /// The last usage report (some servers send one per chunk; the last one counts).
    usage: Option<Usage>,
    /// For an estimate when the server reports no usage: the prompt's tokens, the bytes of
    /// text and reasoning, and the tokens of the tool calls.
    prompt_estimate: u64,
    text_bytes: usize,
    call_tokens: usize,
}

#[derive(Default)]
struct PartialCall {
    index: Option<u32>,
    id: String,
    name: String,
    arguments: String,
}

impl Answer {
    fn apply(&mut self, chunk: ChunkWire<'_>, pending: &mut VecDeque<ModelChunk>) {
        if let Some(u) = chunk.usage {
            self.usage = Some(u.to_usage());
        }
        let Some(choice) = chunk.choices.0 else {
            return;
        };
        for delta in [choice.delta, choice.message].into_iter().flatten() {
            self.apply_delta(delta, pending);
        }
        if choice.finish_reason.is_some_and(|r| !r.0.is_empty()) {
            self.finished = true;
            self.emit_calls(pending);
        }
    }

    fn apply_delta(&mut self, delta: DeltaWire<'_>, pending: &mut VecDeque<ModelChunk>) {
        let reasoning = match (delta.reasoning_content, delta.reasoning) {
            (Some(r), _) if !r.0.is_empty() => Some(r),
            (_, r) => r,
        };
        if let Some(r) = reasoning.filter(|r| !r.0.is_empty()) {
            self.produced = true;
            self.text_bytes += r.0.len();
            pending.push_back(ModelChunk::Reasoning(r.into_string()));
        }
        if let Some(t) = delta.content.filter(|t| !t.0.is_empty()) {
            self.produced = true;
            self.text_bytes += t.0.len();
            pending.push_back(ModelChunk::Text(t.into_string()));
        }
        for d in delta.tool_calls.into_iter() {
            self.saw_tool_calls = true;
            self.merge_call(d);
        }
        if let Some(f) = delta.function_call {
            let call = self.function_call.get_or_insert_with(PartialCall::default);
            // Some servers repeat the name in every fragment, like tool calls.
            if let Some(name) = f.name.filter(|n| !n.0.is_empty())
                && call.name.is_empty()
            {
                call.name = name.into_string();
            }
            if let Some(a) = f.arguments {
                call.arguments.push_str(&a.0);
            }
        }
    }

    /// Nothing came: no text, reasoning, tool call or finish reason.
    fn is_empty(&self) -> bool {
        !self.finished
            && !self.produced
            && self.calls.is_empty()
            && self.function_call.is_none()
            && !self.calls_emitted
    }

    /// The retryable failure of a 200 answer that carried nothing; `cause` when known.
    fn no_answer(&self, cause: Option<&str>) -> Failure {
        let mut message = String::from(NO_ANSWER);
        if let Some(cause) = cause {
            message.push_str(": ");
            message.push_str(cause);
        }
        if self.streamed {
            message.push_str(NO_ANSWER_HINT);
        }
        Failure::retryable(ModelError::Stream(message))
    }

    fn merge_call(&mut self, d: ToolCallDelta<'_>) {
        let slot = match d.index {
            Some(index) => self.calls.iter().position(|c| c.index == Some(index)),
            // No index (some servers): a new id starts a new call, anything else continues
            // the last one.
            None => match (&d.id, self.calls.last()) {
                (Some(id), Some(last)) if !id.0.is_empty() && last.id != id.0 => None,
                (_, Some(_)) => Some(self.calls.len() - 1),
                (_, None) => None,
            },
        };
        let i = match slot {
            Some(i) => i,
            None => {
                self.calls.push(PartialCall {
                    index: d.index,
                    ..PartialCall::default()
                });
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[i];
        // Id and name come whole in the first fragment; some servers repeat them.
        if let Some(id) = d.id.filter(|id| !id.0.is_empty())
            && call.id.is_empty()
        {
            call.id = id.into_string();
        }
        if let Some(f) = d.function {
            if let Some(name) = f.name.filter(|n| !n.0.is_empty())
                && call.name.is_empty()
            {
                call.name = name.into_string();
            }
            if let Some(a) = f.arguments {
                call.arguments.push_str(&a.0);
            }
        }
    }

    fn emit_calls(&mut self, pending: &mut VecDeque<ModelChunk>) {
        if self.calls_emitted {
            return;
        }
        self.calls_emitted = true;
        self.calls.sort_by_key(|c| c.index.unwrap_or(u32::MAX));
        let legacy = self.function_call.take().filter(|_| !self.saw_tool_calls);
        for call in self.calls.drain(..).chain(legacy) {
            self.call_tokens += context::TOOL_CALL_OVERHEAD_TOKENS
                + tokens_of(call.name.len())
                + tokens_of(call.arguments.len());
            let id = if call.id.is_empty() {
                format!("call_{}", uuid::Uuid::now_v7().simple())
            } else {
                call.id
            };
            pending.push_back(ModelChunk::ToolCall(ToolCallRequest {
                id,
                name: call.name,
                arguments: call.arguments,
            }));
        }
    }

    /// The stream ended properly: hand out the tool calls and the usage (estimated when the
    /// server sent none). An answer that carried nothing is a failure worth another try.
    fn finish(&mut self, pending: &mut VecDeque<ModelChunk>) -> Result<(), Failure> {
        if self.is_empty() {
            return Err(self.no_answer(None));
        }
        self.finished = true;
        self.emit_calls(pending);
        let usage = match self.usage.take() {
            Some(u) => u,
            None => {
                let completion = (tokens_of(self.text_bytes) + self.call_tokens) as u64;
                Usage {
                    prompt_tokens: self.prompt_estimate,
                    completion_tokens: completion,
                    total_tokens: self.prompt_estimate + completion,
                    estimated: true,
                }
            }
        };
        pending.push_back(ModelChunk::Usage(usage));
        Ok(())
    }
}

/// Estimated tokens of `bytes` bytes of text (see [`context`]).
fn tokens_of(bytes: usize) -> usize {
    bytes.div_ceil(context::BYTES_PER_TOKEN)
}

/// The request body for `target`, compacted to its context window when needed, and the
/// estimated tokens of the prompt it carries.
pub(crate) fn encode_request(
    target: &Target,
    request: &ModelRequest,
) -> Result<(Bytes, u64), ModelError> {
    let ep = &target.endpoint;
    let mut messages: Cow<'_, [Message]> = Cow::Borrowed(&request.messages);
    let tools = context::estimate_tool_tokens(&request.tools);
    let mut estimate = context::estimate_tokens(&request.messages) + tools;
    if let Some(window) = ep.context_window {
        let limit = (f64::from(window) * ep.compact_at) as usize;
        if estimate > limit {
            let compacted = context::compact(&request.messages, limit.saturating_sub(tools));
            tracing::debug!(
                url = %target.url,
                estimate,
                limit,
                before = request.messages.len(),
                after = compacted.len(),
                "history compacted for the context window"
            );
            estimate = context::estimate_tokens(&compacted) + tools;
            messages = Cow::Owned(compacted);
        }
    }
    let body = RequestBody {
        endpoint: ep,
        messages: &messages,
        tools: &request.tools,
    };
    serde_json::to_vec(&body)
        .map(|b| (Bytes::from(b), estimate as u64))
        .map_err(|e| ModelError::Other(format!("cannot encode the model request: {e}")))
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// The wait before retry number `attempt` (1 = the first retry): exponential from
/// `base_delay`, capped at `max_delay`, with jitter over its upper half. A server's
/// `Retry-After` replaces it, capped at `max_delay`.
pub(crate) fn backoff(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(policy.max_delay);
    }
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(policy.max_delay);
    let half = exp / 2;
    half + half.mul_f64(jitter())
}

/// A number in [0, 1) that differs between calls (std's hasher keys are random per process
/// and change with every `RandomState`).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` in seconds (or OpenAI's `retry-after-ms`); HTTP dates are not used by model
/// APIs and are ignored.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms.min(86_400_000.0) / 1000.0));
    }
    number(RETRY_AFTER.as_str()).map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// Reads at most `cap` bytes of a body, giving up after `timeout`.
async fn read_capped(mut response: reqwest::Response, timeout: Duration, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = cap - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() >= cap {
                break;
            }
        }
    })
    .await;
    out
}

/// The message of an error response in plain words.
pub(crate) fn error_message(body: &[u8], status: StatusCode) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(m) = error_message_in(&v)
    {
        return clip(&m, MAX_ERROR_MESSAGE);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') {
        // Nothing, or an HTML error page from a proxy.
        return status
            .canonical_reason()
            .unwrap_or("no details given")
            .to_owned();
    }
    clip(text, MAX_ERROR_MESSAGE)
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The final error once every try failed, saying how hard tether tried.
fn gave_up(error: ModelError, tries: u32, endpoints: usize) -> ModelError {
    if tries <= 1 {
        return error;
    }
    let note = if endpoints > 1 {
        format!(" (gave up after {tries} tries on {endpoints} endpoints)")
    } else {
        format!(" (gave up after {tries} tries)")
    };
    match error {
        ModelError::Http { status, message } => ModelError::Http {
            status,
            message: message + &note,
        },
        ModelError::Connect(m) => ModelError::Connect(m + &note),
        ModelError::Stream(m) => ModelError::Stream(m + &note),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d1 = backoff(&p, 1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = backoff(&p, 3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d9 = backoff(&p, 9, None);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1));
            assert!(backoff(&p, u32::MAX, None) <= Duration::from_secs(1));
        }
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(3600))),
            Duration::from_secs(1)
        );
        // The jitter really varies.
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(&p, 4, None)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "250".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "-3".parse().expect("header"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_messages_in_plain_words() {
        assert_eq!(
            error_message(
                br#"{"error":{"message":"Unknown model: gpt-9","type":"invalid_request_error"}}"#,
                StatusCode::BAD_REQUEST
            ),
            "Unknown model: gpt-9"
        );
        assert_eq!(
            error_message(b"<html><body>502</body></html>", StatusCode::BAD_GATEWAY),
            "Bad Gateway"
        );
        assert_eq!(
            error_message(b"", StatusCode::TOO_MANY_REQUESTS),
            "Too Many Requests"
        );
        assert_eq!(
            error_message(b" plain words \n", StatusCode::IM_A_TEAPOT),
            "plain words"
        );
        let long = "x".repeat(5000);
        assert!(error_message(long.as_bytes(), StatusCode::BAD_REQUEST).len() < 700);
    }

    fn chunk(raw: &str) -> ChunkWire<'_> {
        serde_json::from_str(raw).expect("test chunk parses")
    }

    #[test]
    fn tool_calls_assemble_by_index() {
        let mut a = Answer::default();
        let mut out = VecDeque::new();
        for raw in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"b","type":"function","function":{"name":"g","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{\"x\""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":":1}"}}]}}]}"#,
        ] {
            a.apply(chunk(raw), &mut out);
        }
        assert!(out.is_empty());
        a.apply(
            chunk(r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#),
            &mut out,
        );
        let calls: Vec<ModelChunk> = out.drain(..).collect();
        assert_eq!(
            calls,
            vec![
                ModelChunk::ToolCall(ToolCallRequest {
                    id: "a".into(),
                    name: "f".into(),
                    arguments: r#"{"x":1}"#.into()
                }),
                ModelChunk::ToolCall(ToolCallRequest {
                    id: "b".into(),
                    name: "g".into(),
                    arguments: "{}".into()
                }),
            ]
        );
    }

    #[test]
    fn tool_calls_without_index_or_id() {
        let mut a = Answer::default();
        let mut out = VecDeque::new();
        for raw in [
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"h","arguments":"{}"}}]}}]}"#,
        ] {
            a.apply(chunk(raw), &mut out);
        }
        assert!(a.finish(&mut out).is_ok());
        let calls: Vec<(String, String, String)> = out
            .drain(..)
            .filter_map(|c| match c {
                ModelChunk::ToolCall(c) => Some((c.id, c.name, c.arguments)),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0], ("a".into(), "f".into(), "{}".into()));
        assert_eq!((calls[1].0.as_str(), calls[1].1.as_str()), ("b", "g"));
        assert_eq!(calls[1].2, "{}");

        // No id at all: one is made up.
        let mut a = Answer::default();
        a.apply(
            chunk(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f"}}]},"finish_reason":"stop"}]}"#),
            &mut out,
        );
        assert!(
            matches!(out.pop_front(), Some(ModelChunk::ToolCall(c)) if c.id.starts_with("call_") && c.name == "f")
        );
    }

    #[test]
    fn usage_is_reported_once_at_the_end() {
        let mut a = Answer::default();
        let mut out = VecDeque::new();
        a.apply(
            chunk(r#"{"choices":[{"delta":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
            &mut out,
        );
        a.apply(
            chunk(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#),
            &mut out,
        );
        assert!(a.finish(&mut out).is_ok());
        let all: Vec<ModelChunk> = out.drain(..).collect();
        assert_eq!(
            all,
            vec![
                ModelChunk::Text("hi".into()),
                ModelChunk::Usage(Usage {
                    prompt_tokens: 1,
                    completion_tokens: 2,
                    total_tokens: 3,
                    estimated: false,
                })
            ]
        );
    }

    #[test]
    fn reasoning_content_is_preferred_and_reasoning_accepted() {
        let mut a = Answer::default();
        let mut out = VecDeque::new();
        a.apply(
            chunk(r#"{"choices":[{"delta":{"reasoning_content":"r1","reasoning":"r1","content":"t"}}]}"#),
            &mut out,
        );
        a.apply(
            chunk(r#"{"choices":[{"delta":{"reasoning":"r2"}}]}"#),
            &mut out,
        );
        let all: Vec<ModelChunk> = out.drain(..).collect();
        assert_eq!(
            all,
            vec![
                ModelChunk::Reasoning("r1".into()),
                ModelChunk::Text("t".into()),
                ModelChunk::Reasoning("r2".into()),
            ]
        );
    }

    #[test]
    fn gave_up_says_how_often() {
        let e = gave_up(
            ModelError::Http {
                status: 503,
                message: "busy".into(),
            },
            6,
            2,
        );
        assert_eq!(
            e.to_string(),
            "model returned HTTP 503: busy (gave up after 6 tries on 2 endpoints)"
        );
    }
}

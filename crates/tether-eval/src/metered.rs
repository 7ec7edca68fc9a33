//! A provider wrapper that counts what a diagnosis costs: model calls (rounds) and tokens in
//! and out. A call whose stream reported no usage is estimated
//! ([`tether_engine::context::estimate_tokens`] of the request, bytes/4 of the answer) and
//! the total says so.

use futures_util::StreamExt;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tether_engine::context::{BYTES_PER_TOKEN, estimate_tokens, estimate_tool_tokens};
use tether_engine::model::{ModelChunk, ModelProvider, ModelRequest, ModelStream};
use tether_host::sync::lock;

/// What one model call cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CallCost {
    /// Estimated before the call from the request.
    estimated_in: u64,
    /// Bytes of answer seen (text, reasoning, tool call names and arguments).
    answer_bytes: u64,
    /// What the server reported, when it did.
    reported: Option<(u64, u64)>,
    /// Something of an answer came (a chunk that is not an error).
    answered: bool,
}

/// Totals over the calls made so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub rounds: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Some call reported no usage: its share is estimated.
    pub estimated: bool,
    /// The model answered at least once (`false`: every call failed before any answer, so
    /// nothing about the model was measured).
    pub answered: bool,
}

/// Wraps a provider; [`Meter::cost`] reads what went through it.
pub struct Metered {
    inner: Arc<dyn ModelProvider>,
    calls: Arc<Mutex<Vec<CallCost>>>,
}

/// The read side of a [`Metered`] provider.
#[derive(Clone)]
pub struct Meter {
    calls: Arc<Mutex<Vec<CallCost>>>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn ModelProvider>) -> (Arc<dyn ModelProvider>, Meter) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        (
            Arc::new(Metered {
                inner,
                calls: calls.clone(),
            }),
            Meter { calls },
        )
    }
}

impl Meter {
    pub fn cost(&self) -> Cost {
        let calls = lock(&self.calls);
        let mut c = Cost {
            rounds: u32::try_from(calls.len()).unwrap_or(u32::MAX),
            ..Cost::default()
        };
        for call in calls.iter() {
            c.answered |= call.answered;
            match call.reported {
                Some((i, o)) => {
                    c.tokens_in += i;
                    c.tokens_out += o;
                }
                None => {
                    c.estimated = true;
                    c.tokens_in += call.estimated_in;
                    c.tokens_out += call.answer_bytes.div_ceil(BYTES_PER_TOKEN as u64);
                }
            }
        }
        c
    }
}

impl ModelProvider for Metered {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let estimated_in =
            (estimate_tokens(&request.messages) + estimate_tool_tokens(&request.tools)) as u64;
        let index = {
            let mut calls = lock(&self.calls);
            calls.push(CallCost {
                estimated_in,
                ..CallCost::default()
            });
            calls.len() - 1
        };
        let calls = self.calls.clone();
        self.inner
            .stream(request)
            .inspect(move |item| {
                let mut calls = lock(&calls);
                let Some(call) = calls.get_mut(index) else {
                    return;
                };
                call.answered |= item.is_ok();
                match item {
                    Ok(ModelChunk::Text(t) | ModelChunk::Reasoning(t)) => {
                        call.answer_bytes += t.len() as u64
                    }
                    Ok(ModelChunk::ToolCall(tc)) => {
                        call.answer_bytes += (tc.name.len() + tc.arguments.len()) as u64
                    }
                    Ok(ModelChunk::Usage(u)) => {
                        let (i, o) = call.reported.unwrap_or((0, 0));
                        call.reported = Some((i + u.prompt_tokens, o + u.completion_tokens));
                    }
                    Err(_) => {}
                }
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_engine::model::Message;
    use tether_engine::scripted::ScriptedProvider;

    #[tokio::test]
    async fn calls_are_counted_and_missing_usage_is_estimated() {
        let inner = ScriptedProvider::from_json(
            r#"{"responses": [{"text": "12345678"}], "loop": true}"#,
            "t",
        )
        .expect("script");
        let (p, meter) = Metered::wrap(Arc::new(inner));
        let request = ModelRequest {
            messages: vec![Message::User {
                content: "x".repeat(40),
            }],
            tools: vec![],
        };
        let chunks: Vec<_> = p.stream(request.clone()).collect().await;
        assert!(!chunks.is_empty());
        let _ = p.stream(request).collect::<Vec<_>>().await;
        let c = meter.cost();
        assert_eq!(c.rounds, 2);
        assert!(c.estimated && c.answered);
        // 40 bytes / 4 + 4 per message, twice; 8 bytes of answer / 4, twice.
        assert_eq!((c.tokens_in, c.tokens_out), (28, 4));
    }
}

//! The chat-completions wire format: the request body tether sends and the stream chunks it
//! reads. Response types borrow from the event's bytes where the JSON allows it, so decoding a
//! chunk allocates only the text it carries.

use super::config::OpenAiEndpoint;
use crate::model::Message;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use tether_host::tools::ToolSpec;
use tether_proto::Usage;

/// The user message added when a request has none (some servers refuse requests without).
pub(crate) const MINIMAL_USER_MESSAGE: &str = "Continue.";

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// The body of one `POST /chat/completions`.
pub(crate) struct RequestBody<'a> {
    pub endpoint: &'a OpenAiEndpoint,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
}

impl RequestBody<'_> {
    fn token_limit(&self) -> Option<(&'static str, u32)> {
        match (
            self.endpoint.max_tokens,
            self.endpoint.max_completion_tokens,
        ) {
            (_, Some(n)) => Some(("max_completion_tokens", n)),
            (Some(n), None) => Some(("max_tokens", n)),
            (None, None) => None,
        }
    }
}

impl Serialize for RequestBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ep = self.endpoint;
        let limit = self.token_limit();
        let tool_choice = ep.tool_choice.wire().filter(|_| !self.tools.is_empty());
        let ours = |key: &str| -> bool {
            match key {
                "model" | "messages" | "stream" => true,
                "stream_options" => ep.stream && ep.include_usage,
                "tools" => !self.tools.is_empty(),
                "tool_choice" => tool_choice.is_some(),
                other => limit.is_some_and(|(k, _)| k == other),
            }
        };
        let mut map = serializer.serialize_map(None)?;
        // `extra_body` first and without the keys tether sets: the standard fields win.
        for (key, value) in &ep.extra_body {
            if !ours(key) {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("model", &ep.model)?;
        map.serialize_entry(
            "messages",
            &Messages {
                messages: self.messages,
                replay_reasoning: ep.replay_reasoning,
            },
        )?;
        map.serialize_entry("stream", &ep.stream)?;
        if ep.stream && ep.include_usage {
            map.serialize_entry(
                "stream_options",
                &StreamOptions {
                    include_usage: true,
                },
            )?;
        }
        if !self.tools.is_empty() {
            map.serialize_entry("tools", &Tools(self.tools))?;
        }
        if let Some(choice) = tool_choice {
            map.serialize_entry("tool_choice", choice)?;
        }
        if let Some((key, n)) = limit {
            map.serialize_entry(key, &n)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

struct Messages<'a> {
    messages: &'a [Message],
    replay_reasoning: bool,
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let has_user = self
            .messages
            .iter()
            .any(|m| matches!(m, Message::User { .. }));
        let mut seq =
            serializer.serialize_seq(Some(self.messages.len() + usize::from(!has_user)))?;
        for message in self.messages {
            seq.serialize_element(&WireMessage {
                message,
                replay_reasoning: self.replay_reasoning,
            })?;
        }
        if !has_user {
            seq.serialize_element(&WireMessage {
                message: &Message::User {
                    content: MINIMAL_USER_MESSAGE.into(),
                },
                replay_reasoning: false,
            })?;
        }
        seq.end()
    }
}

struct WireMessage<'a> {
    message: &'a Message,
    replay_reasoning: bool,
}

impl Serialize for WireMessage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.message {
            Message::System { content } => {
                map.serialize_entry("role", "system")?;
                map.serialize_entry("content", content)?;
            }
            Message::User { content } => {
                map.serialize_entry("role", "user")?;
                map.serialize_entry("content", content)?;
            }
            Message::Assistant {
                content,
                reasoning,
                tool_calls,
            } => {
                map.serialize_entry("role", "assistant")?;
                // Always a string, `""` beside tool calls too: OpenAI's clients send null there,
                // but llama-cpp-python's chat templates fail on it (HTTP 500).
                map.serialize_entry("content", content)?;
                if self.replay_reasoning
                    && let Some(r) = reasoning.as_deref().filter(|r| !r.is_empty())
                {
                    map.serialize_entry("reasoning_content", r)?;
                }
                if !tool_calls.is_empty() {
                    map.serialize_entry("tool_calls", &WireToolCalls(tool_calls))?;
                }
            }
            Message::Tool {
                tool_call_id,
                content,
                ..
            } => {
                map.serialize_entry("role", "tool")?;
                map.serialize_entry("tool_call_id", tool_call_id)?;
                map.serialize_entry("content", content)?;
            }
        }
        map.end()
    }
}

struct WireToolCalls<'a>(&'a [crate::model::ToolCallRequest]);

impl Serialize for WireToolCalls<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Call<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            function: Function<'a>,
        }
        #[derive(Serialize)]
        struct Function<'a> {
            name: &'a str,
            arguments: &'a str,
        }
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for call in self.0 {
            // Servers that parse the arguments refuse an empty string.
            let arguments = if call.arguments.trim().is_empty() {
                "{}"
            } else {
                &call.arguments
            };
            seq.serialize_element(&Call {
                id: &call.id,
                kind: "function",
                function: Function {
                    name: &call.name,
                    arguments,
                },
            })?;
        }
        seq.end()
    }
}

struct Tools<'a>(&'a [ToolSpec]);

impl Serialize for Tools<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tool<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            function: Function<'a>,
        }
        #[derive(Serialize)]
        struct Function<'a> {
            name: &'a str,
            description: &'a str,
            parameters: &'a Value,
        }
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for t in self.0 {
            seq.serialize_element(&Tool {
                kind: "function",
                function: Function {
                    name: &t.name,
                    description: &t.description,
                    parameters: &t.parameters,
                },
            })?;
        }
        seq.end()
    }
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// A JSON string that borrows from the input when it has no escapes. With `JSON = true` an
/// object or array is kept as its JSON text (tool-call arguments sent as an object by some
/// servers); otherwise anything but a string reads as empty.
pub(crate) struct Text<'a, const JSON: bool = false>(pub Cow<'a, str>);

impl<'a, const JSON: bool> Text<'a, JSON> {
    pub(crate) fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a, const JSON: bool> Deserialize<'de> for Text<'a, JSON> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<const JSON: bool>;
        impl<'de, const JSON: bool> Visitor<'de> for V<JSON> {
            type Value = Text<'de, JSON>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                if JSON {
                    let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                    Ok(Text(Cow::Owned(v.to_string())))
                } else {
                    IgnoredAny::deserialize(de::value::MapAccessDeserializer::new(map))?;
                    Ok(Text(Cow::Borrowed("")))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                if JSON {
                    let v = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                    Ok(Text(Cow::Owned(v.to_string())))
                } else {
                    IgnoredAny::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                    Ok(Text(Cow::Borrowed("")))
                }
            }
        }
        deserializer.deserialize_any(V::<JSON>)
    }
}

/// One `data:` event of the stream (or, for servers that do not stream, the whole answer).
#[derive(Deserialize)]
pub(crate) struct ChunkWire<'a> {
    #[serde(default, borrow)]
    pub choices: FirstChoice<'a>,
    #[serde(default)]
    pub usage: Option<UsageWire>,
    #[serde(default)]
    pub error: Option<Value>,
}

/// The first element of `choices` (tether asks for one); the others are skipped without
/// collecting them.
#[derive(Default)]
pub(crate) struct FirstChoice<'a>(pub Option<ChoiceWire<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstChoice<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstChoice(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<ChoiceWire<'de>>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoice(first))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Deserialize)]
pub(crate) struct ChoiceWire<'a> {
    #[serde(default, borrow)]
    pub delta: Option<DeltaWire<'a>>,
    /// Non-streamed answers carry `message` instead of `delta`.
    #[serde(default, borrow)]
    pub message: Option<DeltaWire<'a>>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct DeltaWire<'a> {
    #[serde(default, borrow)]
    pub content: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub reasoning_content: Option<Text<'a>>,
    /// The name some gateways use for `reasoning_content`.
    #[serde(default, borrow)]
    pub reasoning: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub tool_calls: ToolDeltas<'a>,
    /// The call of the legacy `functions` API. Servers that speak both (llama-cpp-python) send
    /// the same call here and in `tool_calls`; it only counts when `tool_calls` never came.
    #[serde(default, borrow)]
    pub function_call: Option<FunctionDelta<'a>>,
}

/// The tool-call fragments of one delta: nearly always one, kept inline.
#[derive(Default)]
pub(crate) struct ToolDeltas<'a> {
    pub first: Option<ToolCallDelta<'a>>,
    pub rest: Vec<ToolCallDelta<'a>>,
}

impl<'a> ToolDeltas<'a> {
    pub(crate) fn into_iter(self) -> impl Iterator<Item = ToolCallDelta<'a>> {
        self.first.into_iter().chain(self.rest)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ToolDeltas<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ToolDeltas<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of tool calls")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ToolDeltas::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<ToolCallDelta<'de>>()?;
                let mut rest = Vec::new();
                if first.is_some() {
                    while let Some(d) = seq.next_element::<ToolCallDelta<'de>>()? {
                        rest.push(d);
                    }
                }
                Ok(ToolDeltas { first, rest })
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Deserialize)]
pub(crate) struct ToolCallDelta<'a> {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default, borrow)]
    pub id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    pub name: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub arguments: Option<Text<'a, true>>,
}

#[derive(Clone, Copy, Deserialize)]
pub(crate) struct UsageWire {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

impl UsageWire {
    pub(crate) fn to_usage(self) -> Usage {
        let prompt = self.prompt_tokens.unwrap_or(0);
        let completion = self.completion_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self.total_tokens.unwrap_or(prompt + completion),
            estimated: false,
        }
    }
}

/// The human part of an error document: `{"error": {"message": …}}`, `{"error": "…"}`,
/// `{"message": …}` or `{"detail": …}`.
pub(crate) fn error_message_in(v: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    };
    match v.get("error") {
        Some(Value::Object(e)) => {
            if let Some(m) = e.get("message").and_then(text) {
                return Some(m);
            }
        }
        Some(other) => {
            if let Some(m) = text(other) {
                return Some(m);
            }
        }
        None => {}
    }
    if let Some(m) = v.get("message").and_then(text) {
        return Some(m);
    }
    match v.get("detail") {
        Some(Value::String(_)) => v.get("detail").and_then(text),
        Some(d @ (Value::Array(_) | Value::Object(_))) => Some(d.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolCallRequest;
    use serde_json::json;

    #[test]
    fn text_borrows_unless_escaped() {
        let raw = br#"{"choices":[{"delta":{"content":"plain","reasoning":"a\nb"}}]}"#;
        let chunk: ChunkWire<'_> = serde_json::from_slice(raw).expect("parses");
        let delta = chunk.choices.0.and_then(|c| c.delta).expect("delta");
        assert!(matches!(
            delta.content.map(|t| t.0),
            Some(Cow::Borrowed("plain"))
        ));
        assert!(matches!(delta.reasoning.map(|t| t.0), Some(Cow::Owned(s)) if s == "a\nb"));
    }

    #[test]
    fn odd_but_seen_shapes_parse() {
        for raw in [
            r#"{"choices":null,"usage":null}"#,
            r#"{"choices":[]}"#,
            r#"{"choices":[{"delta":{"content":null,"tool_calls":null,"reasoning":{"x":1}}}]}"#,
            r#"{"choices":[{"delta":{}},{"delta":{"content":"second choice"}}]}"#,
            r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant"},"logprobs":null,"finish_reason":null}]}"#,
        ] {
            let parsed = serde_json::from_str::<ChunkWire<'_>>(raw);
            assert!(parsed.is_ok(), "{raw}: {:?}", parsed.err());
        }
        let raw = r#"{"choices":[{"message":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":{"k":[1]}}}]}}]}"#;
        let chunk: ChunkWire<'_> = serde_json::from_str(raw).expect("parses");
        let call = chunk
            .choices
            .0
            .and_then(|c| c.message)
            .and_then(|m| m.tool_calls.first)
            .and_then(|c| c.function)
            .and_then(|f| f.arguments)
            .map(|a| a.into_string());
        assert_eq!(call.as_deref(), Some(r#"{"k":[1]}"#));
    }

    #[test]
    fn error_messages_are_found() {
        assert_eq!(
            error_message_in(&json!({"error": {"message": "bad key", "type": "x"}})).as_deref(),
            Some("bad key")
        );
        assert_eq!(
            error_message_in(&json!({"error": "overloaded"})).as_deref(),
            Some("overloaded")
        );
        assert_eq!(
            error_message_in(&json!({"detail": "nope"})).as_deref(),
            Some("nope")
        );
        assert_eq!(error_message_in(&json!({"x": 1})), None);
    }

    #[test]
    fn request_body_shape() {
        let mut ep = OpenAiEndpoint::new("http://h/v1", "m");
        ep.max_tokens = Some(5);
        ep.extra_body.insert("model".into(), json!("not this"));
        ep.extra_body.insert("temperature".into(), json!(0.2));
        let messages = vec![
            Message::System {
                content: "s".into(),
            },
            Message::Assistant {
                content: String::new(),
                reasoning: Some("thought".into()),
                tool_calls: vec![ToolCallRequest {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: "".into(),
                }],
            },
            Message::Tool {
                tool_call_id: "c1".into(),
                name: "f".into(),
                content: "out".into(),
            },
        ];
        let body = RequestBody {
            endpoint: &ep,
            messages: &messages,
            tools: &[],
        };
        let v = serde_json::to_value(&body).expect("serializes");
        assert_eq!(
            v,
            json!({
                "temperature": 0.2,
                "model": "m",
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "", "reasoning_content": "thought",
                     "tool_calls": [{"id": "c1", "type": "function",
                                     "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "out"},
                    {"role": "user", "content": MINIMAL_USER_MESSAGE},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 5,
            })
        );
    }
}

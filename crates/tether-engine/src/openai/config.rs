//! Settings of the OpenAI-compatible provider. Serde-free: the binary maps its TOML to these.

use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// One OpenAI-compatible chat-completions endpoint and the model asked there.
#[derive(Clone, PartialEq)]
pub struct OpenAiEndpoint {
    /// Up to and including the API version, e.g. `https://api.openai.com/v1` or
    /// `http://localhost:11434/v1`; tether posts to `{base_url}/chat/completions`.
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …`.
    pub api_key: Option<String>,
    /// The name of an environment variable holding the key (read when the provider is built).
    pub api_key_env: Option<String>,
    /// Sent as `max_tokens` (most servers). Exclusive with `max_completion_tokens`.
    pub max_tokens: Option<u32>,
    /// Sent as `max_completion_tokens` (OpenAI reasoning models). Exclusive with `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// The model's context window in tokens; enables compaction (see [`crate::context`]).
    pub context_window: Option<u32>,
    /// Extra top-level request fields (`temperature`, `top_p`, vendor options…), merged under
    /// the fields tether sets: on a conflict tether's value is sent.
    pub extra_body: Map<String, Value>,
    /// Share of `context_window` above which the history is compacted (0 < x ≤ 1).
    pub compact_at: f64,
    /// Ask for token usage in the stream (`stream_options.include_usage`). Some servers refuse
    /// `stream_options`; turn this off for them.
    pub include_usage: bool,
    /// Send the model's earlier reasoning back as `reasoning_content` on assistant messages.
    /// Some APIs need it (reasoning with tool calls), a few refuse it.
    pub replay_reasoning: bool,
    /// The `tool_choice` sent with requests that offer tools.
    pub tool_choice: ToolChoice,
    /// Ask for a streamed answer (the default). Off, the answer comes whole at the end, for
    /// servers that cannot stream some answers (llama-cpp-python's `chatml-function-calling`
    /// cannot stream a tool call it chose itself); `idle_timeout` then bounds the whole answer.
    pub stream: bool,
}

/// What a request that offers tools says in `tool_choice`. Never sent without tools (OpenAI
/// refuses that).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// `"auto"`: the model decides. Sent explicitly because some servers (llama-cpp-python's
    /// function-calling handlers) ignore the tools when `tool_choice` is absent.
    #[default]
    Auto,
    /// `"required"`: the model must call a tool in every answer, so a turn only ends at
    /// `max_rounds`; for servers or tests that need forcing.
    Required,
    /// `"none"`: the tools are described but must not be called.
    None,
    /// The field is left out, for servers that refuse it; `extra_body` may then set one (e.g.
    /// an object naming a function).
    Omit,
}

impl ToolChoice {
    /// The values [`parse`](Self::parse) accepts, in their config spelling.
    pub const NAMES: [&'static str; 4] = ["auto", "required", "none", "omit"];

    /// Reads the config spelling; `key` names the setting in the error.
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        match text.trim() {
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            "none" => Ok(ToolChoice::None),
            "omit" => Ok(ToolChoice::Omit),
            other => Err(ConfigError::new(
                key,
                format!(
                    "{key}: `{other}` is not a tool choice; use \"auto\" (the default), \"required\", \"none\" or \"omit\" (to send no tool_choice)"
                ),
            )),
        }
    }

    /// The value sent, or `None` to leave the field out.
    pub fn wire(self) -> Option<&'static str> {
        match self {
            ToolChoice::Auto => Some("auto"),
            ToolChoice::Required => Some("required"),
            ToolChoice::None => Some("none"),
            ToolChoice::Omit => Option::None,
        }
    }
}

impl OpenAiEndpoint {
    pub const DEFAULT_COMPACT_AT: f64 = 0.8;

    /// An endpoint with the defaults for everything but the address and the model.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiEndpoint {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            api_key_env: None,
            max_tokens: None,
            max_completion_tokens: None,
            context_window: None,
            extra_body: Map::new(),
            compact_at: Self::DEFAULT_COMPACT_AT,
            include_usage: true,
            replay_reasoning: true,
            tool_choice: ToolChoice::Auto,
            stream: true,
        }
    }

    /// The URL requests are posted to.
    pub fn chat_completions_url(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }

    /// Checks the settings; `key` names this endpoint in errors (e.g. `model`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let url = self.base_url.trim();
        if url.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.base_url"),
                format!(
                    "{key}.base_url is empty; set the API address, e.g. https://api.openai.com/v1"
                ),
            ));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(
                format!("{key}.base_url"),
                format!("{key}.base_url `{url}` must start with http:// or https://"),
            ));
        }
        if self.model.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{key}.model"),
                format!("{key}.model is empty; name the model to ask"),
            ));
        }
        if self.max_tokens.is_some() && self.max_completion_tokens.is_some() {
            return Err(ConfigError::new(
                format!("{key}.max_tokens"),
                format!("{key}.max_tokens and {key}.max_completion_tokens are both set; use one"),
            ));
        }
        for (name, value) in [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
            ("context_window", self.context_window),
        ] {
            if value == Some(0) {
                return Err(ConfigError::new(
                    format!("{key}.{name}"),
                    format!("{key}.{name} is 0; leave it out or give a positive number"),
                ));
            }
        }
        if self.api_key.is_some() && self.api_key_env.is_some() {
            return Err(ConfigError::new(
                format!("{key}.api_key"),
                format!("{key}.api_key and {key}.api_key_env are both set; use one"),
            ));
        }
        if let Some(env) = &self.api_key_env
            && env.trim().is_empty()
        {
            return Err(ConfigError::new(
                format!("{key}.api_key_env"),
                format!("{key}.api_key_env is empty; name an environment variable"),
            ));
        }
        if !(self.compact_at > 0.0 && self.compact_at <= 1.0) {
            return Err(ConfigError::new(
                format!("{key}.compact_at"),
                format!(
                    "{key}.compact_at is {}; it is a share of the context window, above 0 and at most 1",
                    self.compact_at
                ),
            ));
        }
        Ok(())
    }

    /// The API key: `api_key`, or the variable named by `api_key_env`; `None` when neither is
    /// set. A named variable that is unset or empty is an error.
    pub fn resolve_api_key(&self, key: &str) -> Result<Option<String>, ConfigError> {
        if let Some(k) = &self.api_key {
            return Ok(Some(k.clone()));
        }
        match &self.api_key_env {
            None => Ok(None),
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
                _ => Err(ConfigError::new(
                    format!("{key}.api_key_env"),
                    format!(
                        "{key}.api_key_env names the environment variable {var}, which is not set"
                    ),
                )),
            },
        }
    }
}

impl Default for OpenAiEndpoint {
    fn default() -> Self {
        OpenAiEndpoint::new("", "")
    }
}

// Hand-written so that the key never reaches a log.
impl fmt::Debug for OpenAiEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiEndpoint")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .field("max_tokens", &self.max_tokens)
            .field("max_completion_tokens", &self.max_completion_tokens)
            .field("context_window", &self.context_window)
            .field("extra_body", &self.extra_body)
            .field("compact_at", &self.compact_at)
            .field("include_usage", &self.include_usage)
            .field("replay_reasoning", &self.replay_reasoning)
            .field("tool_choice", &self.tool_choice)
            .field("stream", &self.stream)
            .finish()
    }
}

/// How failed calls are retried on one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per endpoint, the first included (at least 1).
    pub attempts: u32,
    /// The wait before the first retry; doubled for each further retry, with jitter.
    pub base_delay: Duration,
    /// The longest wait between tries, also the cap on a server's `Retry-After`.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
        }
    }
}

/// The whole provider configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAiConfig {
    /// The primary endpoint first, then the fallbacks in order (at least one).
    pub endpoints: Vec<OpenAiEndpoint>,
    pub retry: RetryPolicy,
    /// A stream that sends no bytes for this long fails (also bounds the wait for the
    /// response headers).
    pub idle_timeout: Duration,
    /// The longest a TCP + TLS connect may take.
    pub request_timeout: Duration,
}

impl OpenAiConfig {
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// One endpoint with the default retry policy and timeouts.
    pub fn new(endpoint: OpenAiEndpoint) -> Self {
        OpenAiConfig {
            endpoints: vec![endpoint],
            retry: RetryPolicy::default(),
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The config key naming endpoint `index` in errors: `model` for the primary,
    /// `model.fallback[i]` for the fallbacks.
    pub fn endpoint_key(index: usize) -> String {
        if index == 0 {
            "model".into()
        } else {
            format!("model.fallback[{}]", index - 1)
        }
    }

    /// Checks every setting; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::new(
                "model",
                "model: no endpoint is configured; set model.base_url and model.model",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            e.validate(&Self::endpoint_key(i))?;
        }
        if self.retry.attempts == 0 {
            return Err(ConfigError::new(
                "model.retry.attempts",
                "model.retry.attempts is 0; it counts the first try, so use 1 or more",
            ));
        }
        if self.retry.base_delay > self.retry.max_delay {
            return Err(ConfigError::new(
                "model.retry.base_delay",
                "model.retry.base_delay is longer than model.retry.max_delay",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "model.idle_timeout",
                "model.idle_timeout is 0; give a duration such as 60s",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::new(
                "model.request_timeout",
                "model.request_timeout is 0; give a duration such as 10s",
            ));
        }
        Ok(())
    }
}

/// A configuration mistake. `message` names the key and says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// The offending key, e.g. `model.max_tokens`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OpenAiConfig {
        OpenAiConfig::new(OpenAiEndpoint::new("http://localhost:1/v1", "m"))
    }

    #[test]
    fn a_plain_config_is_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn both_token_limits_are_refused_by_name() {
        let mut c = config();
        c.endpoints[0].max_tokens = Some(10);
        c.endpoints[0].max_completion_tokens = Some(10);
        let e = c.validate().err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("model.max_tokens and model.max_completion_tokens are both set; use one".into())
        );
    }

    #[test]
    fn fallback_errors_name_the_fallback() {
        let mut c = config();
        c.endpoints.push(OpenAiEndpoint::new("localhost:2", "m"));
        let e = c.validate().err();
        assert_eq!(
            e.map(|e| e.key),
            Some("model.fallback[0].base_url".to_string())
        );
    }

    type Mutation = Box<dyn Fn(&mut OpenAiConfig)>;

    #[test]
    fn other_mistakes_are_named() {
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.endpoints.clear()), "model"),
            (Box::new(|c| c.endpoints[0].model.clear()), "model.model"),
            (
                Box::new(|c| c.endpoints[0].compact_at = 1.5),
                "model.compact_at",
            ),
            (
                Box::new(|c| c.endpoints[0].compact_at = f64::NAN),
                "model.compact_at",
            ),
            (
                Box::new(|c| c.endpoints[0].context_window = Some(0)),
                "model.context_window",
            ),
            (
                Box::new(|c| {
                    c.endpoints[0].api_key = Some("k".into());
                    c.endpoints[0].api_key_env = Some("K".into());
                }),
                "model.api_key",
            ),
            (Box::new(|c| c.retry.attempts = 0), "model.retry.attempts"),
            (
                Box::new(|c| c.retry.base_delay = Duration::from_secs(99)),
                "model.retry.base_delay",
            ),
            (
                Box::new(|c| c.idle_timeout = Duration::ZERO),
                "model.idle_timeout",
            ),
        ];
        for (mutate, key) in cases {
            let mut c = config();
            mutate(&mut c);
            let e = c.validate().err();
            assert_eq!(e.as_ref().map(|e| e.key.as_str()), Some(key), "{e:?}");
            assert!(e.is_some_and(|e| e.message.contains(key)));
        }
    }

    #[test]
    fn tool_choices_parse_and_bad_ones_are_named() {
        for name in ToolChoice::NAMES {
            let choice = ToolChoice::parse("model.tool_choice", name);
            assert_eq!(
                choice.map(|c| c.wire().unwrap_or("omit")),
                Ok(name),
                "{name}"
            );
        }
        assert_eq!(ToolChoice::default(), ToolChoice::Auto);
        let e = ToolChoice::parse("model.fallback[0].tool_choice", "always").err();
        assert_eq!(
            e.as_ref().map(|e| e.key.as_str()),
            Some("model.fallback[0].tool_choice")
        );
        assert_eq!(
            e.map(|e| e.message),
            Some(
                "model.fallback[0].tool_choice: `always` is not a tool choice; use \"auto\" (the default), \"required\", \"none\" or \"omit\" (to send no tool_choice)".into()
            )
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let mut e = OpenAiEndpoint::new("http://x/v1", "m");
        e.api_key = Some("sk-secret".into());
        assert!(!format!("{e:?}").contains("sk-secret"));
    }

    #[test]
    fn a_missing_key_variable_is_an_error() {
        let mut e = OpenAiEndpoint::new("http://x/v1", "m");
        e.api_key_env = Some("TETHER_TEST_SURELY_UNSET_VARIABLE".into());
        assert_eq!(
            e.resolve_api_key("model").err().map(|e| e.key),
            Some("model.api_key_env".to_string())
        );
        e.api_key_env = None;
        assert_eq!(e.resolve_api_key("model"), Ok(None));
        e.api_key = Some("k".into());
        assert_eq!(e.resolve_api_key("model"), Ok(Some("k".into())));
    }

    #[test]
    fn the_url_is_built_without_double_slashes() {
        assert_eq!(
            OpenAiEndpoint::new("http://h/v1/", "m").chat_completions_url(),
            "http://h/v1/chat/completions"
        );
    }
}

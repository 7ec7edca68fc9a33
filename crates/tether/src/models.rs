//! `tether models test`: one tiny request to each configured model, with latency or the error
//! in plain words.

use crate::config::{AgentConfig, ModelChoice};
use anyhow::Result;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tether_engine::openai::{OpenAiConfig, probe};

pub async fn test(config: Option<&Path>, timeout: Duration) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    let endpoints = match &cfg.model {
        ModelChoice::Demo => {
            outln!(
                "no [model] is configured: chat uses the built-in demo script, diagnose falls back to inspect"
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        ModelChoice::Scripted { script } => {
            match script {
                Some(s) => outln!("model: scripted, replaying {}", s.display())?,
                None => outln!("model: scripted, replaying the built-in demo script")?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        ModelChoice::OpenAi(m) => m.endpoints.clone(),
    };
    let mut failures = 0;
    for (i, endpoint) in endpoints.iter().enumerate() {
        let role = OpenAiConfig::endpoint_key(i);
        let name = format!("{role}: {} at {}", endpoint.model, endpoint.base_url);
        match probe(endpoint, timeout).await {
            Ok(report) => {
                let first = report
                    .first_chunk
                    .map(|d| format!(", first token after {} ms", d.as_millis()))
                    .unwrap_or_default();
                let preview: String = report.model_answer_preview.chars().take(60).collect();
                outln!(
                    "ok    {name} — answered in {} ms{first}: {preview:?}",
                    report.latency.as_millis()
                )?;
            }
            Err(e) => {
                failures += 1;
                outln!("FAIL  {name} — {e}")?;
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

//! Inspect mode. TEMPORARY PLACEHOLDER (being written): the signatures are final; replace the
//! bodies.

use crate::tools::ToolOutput;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedCall {
    pub tool: String,
    pub args: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Critical,
    Warning,
    Info,
    Ok,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub title: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InspectReport {
    pub markdown: String,
    pub findings: Vec<Finding>,
}

pub fn plan(plugin: &str, _target: Option<&str>) -> Result<Vec<PlannedCall>, String> {
    Err(format!("inspect plugin `{plugin}` is not available yet"))
}

pub fn report(
    _plugin: &str,
    _target: Option<&str>,
    _results: &[(PlannedCall, ToolOutput)],
) -> InspectReport {
    InspectReport {
        markdown: String::new(),
        findings: Vec::new(),
    }
}

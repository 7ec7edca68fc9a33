//! JSON-schema validation of tool arguments. TEMPORARY PLACEHOLDER (being written): the
//! signature is final; replace the body.

use serde_json::Value;

/// Checks `args` against `schema`.
pub fn validate(_schema: &Value, _args: &Value) -> Result<(), String> {
    Ok(())
}

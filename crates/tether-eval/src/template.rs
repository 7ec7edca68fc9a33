//! `{{name}}` placeholders in scenario files: the scratch directory, the free port, and what
//! the fault's inject script recorded (`name=value` lines appended to `$VARS`). They are only
//! known once the fault is in place, so scenarios are expanded per run.

use anyhow::{Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;

/// The values of one run's placeholders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars(BTreeMap<String, String>);

/// A placeholder name: lower-case ASCII letters, digits and `_`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Vars {
    pub fn new() -> Vars {
        Vars::default()
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_owned(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Reads `name=value` lines (what an inject script appended to `$VARS`). Blank lines and
    /// `#` comments are skipped; anything else that is not `name=value` is an error naming
    /// the line.
    pub fn read_lines(&mut self, text: &str) -> Result<()> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                bail!("$VARS line {}: `{line}` is not name=value", i + 1);
            };
            let name = name.trim();
            if !valid_name(name) {
                bail!(
                    "$VARS line {}: `{name}` is not a placeholder name (a-z, 0-9, _)",
                    i + 1
                );
            }
            self.set(name, value.trim());
        }
        Ok(())
    }

    /// `text` with every `{{name}}` replaced. An unknown name is an error that lists the
    /// known ones; `{{` without a closing `}}` is left as it is.
    pub fn expand(&self, text: &str) -> Result<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else {
                break;
            };
            let name = rest[start + 2..start + 2 + len].trim();
            out.push_str(&rest[..start]);
            match self.0.get(name) {
                Some(v) => out.push_str(v),
                None => bail!(
                    "unknown placeholder {{{{{name}}}}} (known: {})",
                    self.names().collect::<Vec<_>>().join(", ")
                ),
            }
            rest = &rest[start + 2 + len + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Every string in `value` expanded. A string that is exactly one placeholder whose value
    /// is an integer becomes that number, so `"port": "{{port}}"` is a JSON integer as tool
    /// schemas want.
    pub fn expand_json(&self, value: &Value) -> Result<Value> {
        Ok(match value {
            Value::String(s) => {
                let expanded = self.expand(s)?;
                let whole = s.trim();
                let single = whole.starts_with("{{")
                    && whole.ends_with("}}")
                    && whole.matches("{{").count() == 1;
                match expanded.parse::<i64>() {
                    Ok(n) if single => Value::from(n),
                    _ => Value::String(expanded),
                }
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.expand_json(v))
                    .collect::<Result<_>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.expand_json(v)?)))
                    .collect::<Result<_>>()?,
            ),
            other => other.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.set("scratch", "/tmp/s");
        v.set("port", "8123");
        v
    }

    #[test]
    fn placeholders_expand_and_unknown_ones_are_named() {
        let v = vars();
        assert_eq!(
            v.expand("{{scratch}}/log:{{ port }}").ok().as_deref(),
            Some("/tmp/s/log:8123")
        );
        assert_eq!(v.expand("a {{ b").ok().as_deref(), Some("a {{ b"));
        let e = v.expand("{{pid}}").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("unknown placeholder {{pid}} (known: port, scratch)")
        );
    }

    #[test]
    fn a_lone_numeric_placeholder_becomes_a_number_in_json() {
        let v = vars();
        let out = v
            .expand_json(&json!({"port": "{{port}}", "url": "http://h:{{port}}/", "n": 3}))
            .ok();
        assert_eq!(
            out,
            Some(json!({"port": 8123, "url": "http://h:8123/", "n": 3}))
        );
        // A path that happens to be one placeholder stays a string.
        assert_eq!(
            v.expand_json(&json!(["{{scratch}}"])).ok(),
            Some(json!(["/tmp/s"]))
        );
    }

    #[test]
    fn vars_lines_are_checked() {
        let mut v = Vars::new();
        assert!(v.read_lines("pid=12\n# c\n\nname = x y\n").is_ok());
        assert_eq!(v.get("pid"), Some("12"));
        assert_eq!(v.get("name"), Some("x y"));
        assert!(v.read_lines("oops").is_err());
        assert!(v.read_lines("Bad=1").is_err());
    }
}

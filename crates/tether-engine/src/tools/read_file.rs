//! `read_file`: reads a file below one of the configured directories.
//!
//! The path is resolved (symlinks included) before it is checked, so a link inside an allowed
//! directory that points outside it is refused.

use super::{Tool, ToolContext, ToolOutput, parse_args};
use crate::model::ToolSpec;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tether_proto::MAX_TOOL_OUTPUT_BYTES;

pub struct ReadFile {
    roots: Vec<PathBuf>,
}

impl ReadFile {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        ReadFile { roots }
    }
}

/// Resolves `path` and checks it lies below one of `roots` (both with symlinks resolved).
pub fn resolve_allowed(path: &str, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let requested = Path::new(path);
    if !requested.is_absolute() {
        return Err(format!("`{path}` is not an absolute path"));
    }
    if roots.is_empty() {
        return Err("no directories are allowed for reading (tools.read_dirs is empty)".into());
    }
    let resolved = std::fs::canonicalize(requested).map_err(|e| format!("`{path}`: {e}"))?;
    for root in roots {
        let Ok(root) = std::fs::canonicalize(root) else {
            continue;
        };
        if resolved.starts_with(&root) {
            return Ok(resolved);
        }
    }
    let allowed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(format!(
        "`{path}` resolves to {} which is outside the allowed directories ({})",
        resolved.display(),
        allowed.join(", ")
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    path: String,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    max_bytes: Option<usize>,
}

fn read(args: Args, roots: &[PathBuf]) -> ToolOutput {
    let path = match resolve_allowed(&args.path, roots) {
        Ok(p) => p,
        Err(e) => return ToolOutput::error(e),
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return ToolOutput::error(format!("cannot open {}: {e}", path.display())),
    };
    let size = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return ToolOutput::error(format!("{} is not a regular file", path.display())),
        Err(e) => return ToolOutput::error(format!("cannot stat {}: {e}", path.display())),
    };
    if args.offset > 0
        && let Err(e) = file.seek(SeekFrom::Start(args.offset))
    {
        return ToolOutput::error(format!("cannot seek: {e}"));
    }
    let limit = args
        .max_bytes
        .unwrap_or(MAX_TOOL_OUTPUT_BYTES)
        .min(MAX_TOOL_OUTPUT_BYTES);
    let mut buf = Vec::with_capacity(limit.min(size as usize));
    if let Err(e) = file.by_ref().take(limit as u64).read_to_end(&mut buf) {
        return ToolOutput::error(format!("cannot read {}: {e}", path.display()));
    }
    let end = args.offset + buf.len() as u64;
    let mut text = format!(
        "{} ({size} bytes; showing bytes {}..{end})\n",
        path.display(),
        args.offset
    );
    text.push_str(&String::from_utf8_lossy(&buf));
    if end < size {
        text.push_str(&format!(
            "\n[{} more bytes; call again with offset {end}]",
            size - end
        ));
    }
    ToolOutput::ok(text)
}

impl Tool for ReadFile {
    fn spec(&self) -> ToolSpec {
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        ToolSpec {
            name: "read_file".into(),
            description: format!(
                "Read a text file on this host. Only files below these directories may be read: {}. \
                 Returns at most 32 KiB per call; use `offset` to page. Read-only.",
                roots.join(", ")
            ),
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Absolute path of the file."},
                    "offset": {"type": "integer", "minimum": 0, "description": "Byte offset to start at."},
                    "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_TOOL_OUTPUT_BYTES}
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, _ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: Args = match parse_args("read_file", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let roots = self.roots.clone();
            tokio::task::spawn_blocking(move || read(args, &roots))
                .await
                .unwrap_or_else(|e| ToolOutput::error(format!("read failed: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_and_refuses_outside_and_symlink_escapes() {
        let allowed = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(allowed.path().join("ok.log"), "hello").expect("write");
        std::fs::write(outside.path().join("secret"), "nope").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret"), allowed.path().join("link"))
            .expect("symlink");
        let roots = vec![allowed.path().to_path_buf()];

        let ok = read(
            Args {
                path: allowed.path().join("ok.log").display().to_string(),
                offset: 0,
                max_bytes: None,
            },
            &roots,
        );
        assert!(ok.ok && ok.output.ends_with("hello"), "{}", ok.output);

        for p in [
            outside.path().join("secret"),
            allowed.path().join("link"),
            allowed
                .path()
                .join("../")
                .join(outside.path().file_name().expect("name"))
                .join("secret"),
        ] {
            let out = read(
                Args {
                    path: p.display().to_string(),
                    offset: 0,
                    max_bytes: None,
                },
                &roots,
            );
            assert!(!out.ok, "{} was readable: {}", p.display(), out.output);
        }
        assert!(resolve_allowed("relative/path", &roots).is_err());
    }

    #[test]
    fn pages_with_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("big");
        std::fs::write(&f, "0123456789").expect("write");
        let out = read(
            Args {
                path: f.display().to_string(),
                offset: 4,
                max_bytes: Some(3),
            },
            &[dir.path().to_path_buf()],
        );
        assert!(
            out.output
                .contains("456\n[3 more bytes; call again with offset 7]"),
            "{}",
            out.output
        );
    }
}

//! `read_file`: reads a file below one of the configured directories.
//!
//! The path is resolved (symlinks included) before it is checked, so a link inside an allowed
//! directory that points outside it is refused.

use super::blocking::{BLOCKING_TIMEOUT, run_blocking};
use super::files::open_regular;
use super::{Tool, ToolContext, ToolOutput, parse_args};
use crate::tools::ToolSpec;
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
    // A FIFO or device would block open(2) or read(2) for ever: regular files only.
    let (mut file, meta) = match open_regular(&path) {
        Ok(opened) => opened,
        Err(e) => return ToolOutput::error(e.to_string()),
    };
    let size = meta.len();
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

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: Args = match parse_args("read_file", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let roots = self.roots.clone();
            run_blocking("read_file", &ctx.cancel, BLOCKING_TIMEOUT, move |_| {
                read(args, &roots)
            })
            .await
            .unwrap_or_else(ToolOutput::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tether_proto::{SessionId, TurnId};
    use tokio_util::sync::CancellationToken;

    /// Runs `test` on a runtime of its own that is dropped without waiting for its blocking
    /// threads, so a read stuck in open(2) fails the test (by its timeout) instead of hanging
    /// the suite in the runtime's drop.
    fn on_own_runtime(test: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(test)));
        rt.shutdown_background();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo {} failed", path.display());
    }

    fn ctx(cancel: CancellationToken) -> ToolContext {
        ToolContext {
            session_id: SessionId::from("s"),
            turn_id: TurnId::from("t"),
            cancel,
        }
    }

    /// Longest any of these calls may take; they should answer at once.
    const PROMPT: Duration = Duration::from_secs(10);

    #[test]
    fn a_fifo_is_refused_at_once() {
        on_own_runtime(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let fifo = dir.path().join("pipe");
            mkfifo(&fifo);
            let tool = ReadFile::new(vec![dir.path().to_path_buf()]);
            let out = tokio::time::timeout(
                PROMPT,
                tool.call(
                    json!({"path": fifo.display().to_string()}),
                    ctx(CancellationToken::new()),
                ),
            )
            .await
            .expect("read_file on a FIFO hung");
            assert!(!out.ok, "{}", out.output);
            assert!(
                out.output.contains("is a FIFO") && out.output.contains("not a regular file"),
                "{}",
                out.output
            );
        });
    }

    #[test]
    fn many_fifo_reads_do_not_starve_the_blocking_pool() {
        on_own_runtime(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let fifo = dir.path().join("pipe");
            mkfifo(&fifo);
            let tool = std::sync::Arc::new(ReadFile::new(vec![dir.path().to_path_buf()]));
            let calls: Vec<_> = (0..600)
                .map(|_| {
                    let tool = tool.clone();
                    let path = fifo.display().to_string();
                    tokio::spawn(async move {
                        tool.call(json!({ "path": path }), ctx(CancellationToken::new()))
                            .await
                    })
                })
                .collect();
            let answered = tokio::time::timeout(PROMPT, futures_util::future::join_all(calls))
                .await
                .ok();
            // The runtime's blocking pool (which the event log's replay and the spool share)
            // must still take work.
            let probe = tokio::time::timeout(PROMPT, tokio::task::spawn_blocking(|| 7)).await;
            assert!(
                matches!(probe, Ok(Ok(7))),
                "spawn_blocking no longer runs after 600 FIFO reads"
            );
            let answered = answered.expect("600 read_file calls on a FIFO did not all answer");
            for out in answered {
                let out = out.expect("call task");
                assert!(!out.ok && out.output.contains("FIFO"), "{}", out.output);
            }
        });
    }

    #[test]
    fn a_cancelled_call_returns_at_once() {
        on_own_runtime(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let fifo = dir.path().join("pipe");
            mkfifo(&fifo);
            let tool = ReadFile::new(vec![dir.path().to_path_buf()]);
            let cancel = CancellationToken::new();
            cancel.cancel();
            let out = tokio::time::timeout(
                PROMPT,
                tool.call(json!({"path": fifo.display().to_string()}), ctx(cancel)),
            )
            .await
            .expect("a cancelled read_file call did not return");
            assert!(!out.ok, "{}", out.output);
        });
    }

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

//! `filecheck`: whether a file exists, how old it is and how big.
//!
//! Settings:
//! * `path` (required) — the file (or directory); symbolic links are followed.
//! * `must_exist` — missing is Critical (default true, unless `must_not_exist` is set).
//! * `must_not_exist` — present is Critical (a lock file, a "maintenance" flag…).
//! * `max_age` — a duration (`"1h"`): an older modification time is Critical.
//! * `max_size`, `min_size` — byte sizes (`4096`, `"10 MiB"`): larger / smaller is Critical.
//!
//! | check         | target | unit    | default thresholds                    |
//! |---------------|--------|---------|---------------------------------------|
//! | `exists`      | `path` |         | (Status) per `must_exist` / `must_not_exist` |
//! | `age_seconds` | `path` | `s`     | critical_gt `max_age` (none without it) |
//! | `size_bytes`  | `path` | `bytes` | critical_gt `max_size`, critical_lt `min_size` |
//!
//! `age_seconds` and `size_bytes` are reported only while the file exists. A path that cannot
//! be examined (permission denied) fails the run.

use super::{Settings, number, verdict};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Status, Thresholds};
use futures_util::future::BoxFuture;
use std::time::{Duration, SystemTime};
use tether_host::host::human_bytes;

const KEYS: &[&str] = &[
    "path",
    "must_exist",
    "must_not_exist",
    "max_age",
    "max_size",
    "min_size",
];

pub struct FilecheckPlugin;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    MustExist,
    MustNotExist,
    Either,
}

impl Plugin for FilecheckPlugin {
    fn name(&self) -> &'static str {
        "filecheck"
    }

    fn about(&self) -> &'static str {
        "A file's presence, age (modification time) and size"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        let s = Settings::new(self.name(), settings, self.settings_keys())?;
        let path = s.required_string("path")?;
        if !path.starts_with('/') {
            return Err(format!("`path`: `{path}` is not an absolute path"));
        }
        let must_not_exist = s.bool("must_not_exist")?.unwrap_or(false);
        let must_exist = s.bool("must_exist")?.unwrap_or(!must_not_exist);
        let presence = match (must_exist, must_not_exist) {
            (true, true) => {
                return Err("`must_exist` and `must_not_exist` cannot both be true".into());
            }
            (true, false) => Presence::MustExist,
            (false, true) => Presence::MustNotExist,
            (false, false) => Presence::Either,
        };
        let max_age = s.duration("max_age")?;
        let max_size = s.bytes("max_size")?;
        let min_size = s.bytes("min_size")?;
        if let (Some(max), Some(min)) = (max_size, min_size)
            && max < min
        {
            return Err(format!(
                "`max_size` ({max} bytes) is less than `min_size` ({min} bytes)"
            ));
        }
        Ok(Box::new(FilecheckCheck {
            path,
            presence,
            max_age,
            max_size,
            min_size,
        }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    /// None: a file check needs a path.
    fn default_instances(&self) -> Vec<toml::Table> {
        Vec::new()
    }
}

struct FilecheckCheck {
    path: String,
    presence: Presence,
    max_age: Option<Duration>,
    max_size: Option<u64>,
    min_size: Option<u64>,
}

impl Check for FilecheckCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let p = &self.path;
            let meta = match tokio::fs::metadata(p).await {
                Ok(m) => Some(m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(format!("cannot examine {p}: {e}")),
            };
            let (status, description) = match (&meta, self.presence) {
                (Some(_), Presence::MustNotExist) => {
                    (Status::Critical, format!("{p} exists but must not"))
                }
                (Some(_), _) => (Status::Ok, format!("{p} exists")),
                (None, Presence::MustExist) => (Status::Critical, format!("{p} does not exist")),
                (None, _) => (Status::Ok, format!("{p} does not exist")),
            };
            let mut out = vec![verdict("exists", p, status, description)];
            let Some(meta) = meta else {
                return Ok(out);
            };
            if let Ok(mtime) = meta.modified() {
                let age = SystemTime::now()
                    .duration_since(mtime)
                    .unwrap_or(Duration::ZERO)
                    .as_secs();
                out.push(number(
                    "age_seconds",
                    p,
                    age as f64,
                    "s",
                    format!(
                        "{p} was last modified {} ago",
                        humantime::format_duration(Duration::from_secs(age))
                    ),
                    Thresholds {
                        critical_gt: self.max_age.map(|d| d.as_secs_f64()),
                        ..Thresholds::default()
                    },
                ));
            }
            let size = meta.len();
            out.push(number(
                "size_bytes",
                p,
                size as f64,
                "bytes",
                format!("{p} is {}", human_bytes(size)),
                Thresholds {
                    critical_gt: self.max_size.map(|b| b as f64),
                    critical_lt: self.min_size.map(|b| b as f64),
                    ..Thresholds::default()
                },
            ));
            Ok(out)
        })
    }
}

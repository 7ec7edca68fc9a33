//! `disk`: space and inode use of each mounted file system (`statvfs`, like `df` and `df -i`).
//!
//! Settings:
//! * `mounts` — mount points or globs (`"/srv/*"`, `*` stays within one path component, `**`
//!   crosses them) to check. Default: every real file system (no proc, sysfs, cgroup, tmpfs,
//!   …; no overlay other than `/`). A mount point written out literally is checked whatever
//!   its file system type, and reported as `mounted` Critical when nothing is mounted there.
//! * `exclude` — globs of mount points to leave out.
//! * `fs_types_exclude` — file system types (globs, e.g. `"fuse.*"`) to leave out.
//!
//! | check            | target      | labels   | unit | default thresholds         |
//! |------------------|-------------|----------|------|----------------------------|
//! | `space_used_pct` | mount point | `device` | `%`  | warn_ge 80, critical_ge 90 |
//! | `inode_used_pct` | mount point | `device` | `%`  | warn_ge 80, critical_ge 90 |
//! | `mounted`        | mount point |          |      | (Status) literal `mounts` only: Critical when not mounted |
//! | `statvfs`        | mount point | `device` |      | (Status) Critical, only when statvfs fails or hangs |
//!
//! Space follows `df`: used / (used + available to unprivileged users), so the blocks
//! reserved for root count as neither. `inode_used_pct` is left out for file systems without
//! a fixed inode table (btrfs, some network file systems report zero inodes).

use super::{Settings, blocking, one_default_instance, verdict};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Status, Thresholds, Value};
use futures_util::future::BoxFuture;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::BTreeMap;
use std::path::Path;
use tether_host::host::{self, Mount, human_bytes};
use tether_host::tools::diag::disks::{
    Filesystem, STATVFS_TIMEOUT, filesystem_from, select_mounts,
};

const KEYS: &[&str] = &["mounts", "exclude", "fs_types_exclude"];

pub struct DiskPlugin;

impl Plugin for DiskPlugin {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn about(&self) -> &'static str {
        "Space and inode use of each mounted file system (statvfs, like df and df -i)"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        let s = Settings::new(self.name(), settings, self.settings_keys())?;
        let mut literal = Vec::new();
        let mut globs = Vec::new();
        let mut selected = false;
        if let Some(list) = s.string_list("mounts")? {
            selected = true;
            if list.is_empty() {
                return Err(
                    "`mounts` must not be empty (leave it out to check every real \
                    file system)"
                        .into(),
                );
            }
            for m in list {
                if is_glob(&m) {
                    globs.push(m);
                } else {
                    literal.push(normalise_mount(&m, "mounts")?);
                }
            }
        }
        Ok(Box::new(DiskCheck {
            selected,
            literal,
            globs: glob_set("mounts", &globs)?,
            exclude: glob_set("exclude", &s.string_list("exclude")?.unwrap_or_default())?,
            fs_types_exclude: glob_set(
                "fs_types_exclude",
                &s.string_list("fs_types_exclude")?.unwrap_or_default(),
            )?,
        }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    /// One instance: every real file system with the default thresholds.
    fn default_instances(&self) -> Vec<toml::Table> {
        one_default_instance()
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// An absolute mount point without a trailing slash (except `/`).
fn normalise_mount(m: &str, key: &str) -> Result<String, String> {
    let t = m.trim();
    if !t.starts_with('/') {
        return Err(format!("`{key}`: `{m}` is not an absolute path"));
    }
    let t = t.trim_end_matches('/');
    Ok(if t.is_empty() { "/".into() } else { t.into() })
}

fn glob_set(key: &str, patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g: Glob = GlobBuilder::new(p.trim())
            .literal_separator(true)
            .build()
            .map_err(|e| format!("`{key}`: `{p}` is not a valid glob: {e}"))?;
        b.add(g);
    }
    b.build().map_err(|e| format!("`{key}`: {e}"))
}

struct DiskCheck {
    /// Whether `mounts` was given (else: every real file system).
    selected: bool,
    literal: Vec<String>,
    globs: GlobSet,
    exclude: GlobSet,
    fs_types_exclude: GlobSet,
}

/// Whether a mount holds a real file system (as the `disks` tool decides).
fn is_real(m: &Mount) -> bool {
    !(host::is_pseudo_fs(&m.fs_type) || (m.fs_type == "overlay" && m.mount_point != "/"))
}

enum Reading {
    Fs(Filesystem),
    Skip,
    Failed(String),
}

async fn read(mount: Mount, explicit: bool, ctx: &CheckContext) -> (Mount, Reading) {
    let m = mount.clone();
    let task = blocking(move || {
        // Bind mounts of single files (/etc/hosts in a container) repeat their device's figures.
        if !explicit && !Path::new(&m.mount_point).is_dir() {
            return Reading::Skip;
        }
        match host::statvfs(Path::new(&m.mount_point)) {
            Ok(st) if st.blocks == 0 && !explicit => Reading::Skip,
            Ok(st) => Reading::Fs(filesystem_from(&m, &st)),
            Err(e) => Reading::Failed(format!("statvfs of {} failed: {e}", m.mount_point)),
        }
    });
    let limit = STATVFS_TIMEOUT.min(ctx.timeout);
    let reading = tokio::select! {
        r = tokio::time::timeout(limit, task) => match r {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Reading::Failed(e),
            Err(_) => Reading::Failed(format!(
                "statvfs of {} did not answer within {} (hung network file system?)",
                mount.mount_point,
                humantime::format_duration(limit)
            )),
        },
        _ = ctx.cancel.cancelled() => Reading::Failed(super::CANCELLED.into()),
    };
    (mount, reading)
}

fn with_device(mut m: Measurement, device: &str) -> Measurement {
    m.labels = BTreeMap::from([("device".to_owned(), device.to_owned())]);
    m
}

/// The measurements of one file system.
pub fn measurements(fs: &Filesystem) -> Vec<Measurement> {
    let defaults = Thresholds {
        warn_ge: Some(80.0),
        critical_ge: Some(90.0),
        ..Thresholds::default()
    };
    let mut out = vec![with_device(
        Measurement {
            check: "space_used_pct".into(),
            target: fs.mount_point.clone(),
            labels: BTreeMap::new(),
            value: Value::Number(fs.used_pct),
            unit: "%",
            description: format!(
                "{} is {:.1} % full ({} free of {})",
                fs.mount_point,
                fs.used_pct,
                human_bytes(fs.available_bytes),
                human_bytes(fs.total_bytes)
            ),
            defaults: defaults.clone(),
        },
        &fs.device,
    )];
    if let Some(pct) = fs.inodes_used_pct {
        out.push(with_device(
            Measurement {
                check: "inode_used_pct".into(),
                target: fs.mount_point.clone(),
                labels: BTreeMap::new(),
                value: Value::Number(pct),
                unit: "%",
                description: format!(
                    "{} uses {pct:.1} % of its inodes ({} of {})",
                    fs.mount_point, fs.inodes_used, fs.inodes_total
                ),
                defaults,
            },
            &fs.device,
        ));
    }
    out
}

impl DiskCheck {
    /// The mounts to measure, each with whether it was named literally.
    fn choose(&self, visible: Vec<Mount>) -> Vec<(Mount, bool)> {
        visible
            .into_iter()
            .filter_map(|m| {
                let explicit = self.literal.contains(&m.mount_point);
                let wanted = if self.selected {
                    explicit || (is_real(&m) && self.globs.is_match(&m.mount_point))
                } else {
                    is_real(&m)
                };
                let excluded = self.exclude.is_match(&m.mount_point)
                    || self.fs_types_exclude.is_match(&m.fs_type);
                (wanted && !excluded).then_some((m, explicit))
            })
            .collect()
    }
}

impl Check for DiskCheck {
    fn run<'a>(&'a self, ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let mounts = blocking(host::mounts).await?;
            if mounts.is_empty() {
                return Err("cannot read /proc/self/mounts".into());
            }
            let visible = select_mounts(mounts, None, true)?;
            let mut out = Vec::new();
            for lit in &self.literal {
                if self.exclude.is_match(lit) {
                    continue;
                }
                let found = visible.iter().any(|m| &m.mount_point == lit);
                out.push(verdict(
                    "mounted",
                    lit,
                    if found { Status::Ok } else { Status::Critical },
                    if found {
                        format!("{lit} is mounted")
                    } else {
                        format!("nothing is mounted at {lit}")
                    },
                ));
            }
            let chosen = self.choose(visible);
            let readings = futures_util::future::join_all(
                chosen
                    .into_iter()
                    .map(|(m, explicit)| read(m, explicit, &ctx)),
            )
            .await;
            if ctx.cancel.is_cancelled() {
                return Err(super::CANCELLED.into());
            }
            for (mount, reading) in readings {
                match reading {
                    Reading::Fs(fs) => out.extend(measurements(&fs)),
                    Reading::Skip => {}
                    Reading::Failed(e) => out.push(with_device(
                        verdict("statvfs", &mount.mount_point, Status::Critical, e),
                        &mount.device,
                    )),
                }
            }
            Ok(out)
        })
    }
}

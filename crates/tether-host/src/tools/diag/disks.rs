//! `disks` (space and inodes per mounted file system) and `disk_io` (block device activity).

use super::{DEFAULT_SAMPLE_MS, blocking, cancelled, json_output, pause, round1, round2};
use crate::host::{self, DiskStat, Mount};
use crate::tools::ToolSpec;
use crate::tools::blocking::run_blocking;
use crate::tools::{Tool, ToolContext, ToolOutput, parse_args};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// At most this many file systems or devices are listed (keeps the answer within the
/// engine's 32 KiB cap).
pub const MAX_ROWS: usize = 60;

/// How long one `statvfs` may take before its file system is reported as not answering
/// (a hung NFS server blocks the call indefinitely).
pub const STATVFS_TIMEOUT: Duration = Duration::from_secs(5);

/// One mounted file system. Byte figures follow `df`: `used_pct` is used / (used + available),
/// so space reserved for root counts as neither.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Filesystem {
    pub mount_point: String,
    pub device: String,
    pub fs_type: String,
    pub read_only: bool,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub used_pct: f64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
    /// `None` when the file system has no fixed inode table (btrfs, some network file systems).
    pub inodes_used_pct: Option<f64>,
}

/// A file system that could not be measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MountError {
    pub mount_point: String,
    pub error: String,
}

/// What `disks` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DisksReport {
    pub filesystems: Vec<Filesystem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<MountError>,
    pub truncated: bool,
}

/// Space and inode figures from one `statvfs` reading.
pub fn filesystem_from(mount: &Mount, st: &host::FsStats) -> Filesystem {
    let bs = st.block_size;
    let total = st.blocks.saturating_mul(bs);
    let used = st.blocks.saturating_sub(st.blocks_free).saturating_mul(bs);
    let available = st.blocks_available.saturating_mul(bs);
    let inodes_used = st.files.saturating_sub(st.files_free);
    Filesystem {
        mount_point: mount.mount_point.clone(),
        device: mount.device.clone(),
        fs_type: mount.fs_type.clone(),
        read_only: mount.read_only(),
        total_bytes: total,
        used_bytes: used,
        available_bytes: available,
        used_pct: host::pct(used, used.saturating_add(available)),
        inodes_total: st.files,
        inodes_used,
        inodes_free: st.files_free,
        inodes_used_pct: (st.files > 0).then(|| host::pct(inodes_used, st.files)),
    }
}

/// The mounts to measure: the visible one per mount point (a later mount hides an earlier
/// one), without pseudo file systems unless `all`, and without overlay mounts other than `/`
/// (on a container host each container's root is one, repeating the figures of the file
/// system below). With `path`, only the mount holding it.
pub fn select_mounts(
    mounts: Vec<Mount>,
    path: Option<&str>,
    all: bool,
) -> Result<Vec<Mount>, String> {
    let mut visible: Vec<Mount> = Vec::new();
    for m in mounts {
        visible.retain(|v| v.mount_point != m.mount_point);
        visible.push(m);
    }
    if let Some(path) = path {
        let wanted = Path::new(path);
        if !wanted.is_absolute() {
            return Err(format!("`mount`: `{path}` is not an absolute path"));
        }
        return visible
            .into_iter()
            .filter(|m| wanted.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.len())
            .map(|m| vec![m])
            .ok_or_else(|| format!("no mounted file system holds `{path}`"));
    }
    visible.retain(|m| {
        all || !(host::is_pseudo_fs(&m.fs_type) || (m.fs_type == "overlay" && m.mount_point != "/"))
    });
    visible.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    Ok(visible)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisksArgs {
    #[serde(default)]
    mount: Option<String>,
    #[serde(default)]
    all: Option<bool>,
}

enum Measured {
    Fs(Filesystem),
    Skip,
    Failed(String),
}

async fn measure(
    mount: Mount,
    explicit: bool,
    all: bool,
    cancel: &CancellationToken,
) -> (String, Measured) {
    let point = mount.mount_point.clone();
    let what = format!("statvfs of {point}");
    let task = run_blocking(&what, cancel, STATVFS_TIMEOUT, move |_| {
        // Bind mounts of single files (/etc/hosts in a container) repeat their device's figures.
        if !explicit && !all && !Path::new(&mount.mount_point).is_dir() {
            return Measured::Skip;
        }
        match host::statvfs(Path::new(&mount.mount_point)) {
            Ok(st) if st.blocks == 0 && !explicit => Measured::Skip,
            Ok(st) => Measured::Fs(filesystem_from(&mount, &st)),
            Err(e) => Measured::Failed(e.to_string()),
        }
    });
    let measured = match task.await {
        Ok(m) => m,
        Err(e) => Measured::Failed(e.to_string()),
    };
    (point, measured)
}

pub struct DisksTool;

impl Tool for DisksTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "disks".into(),
            description: "Space and inodes of each mounted file system of this host (like \
                `df -h` and `df -i` together): size, used, available, used % and inode use. \
                Pseudo file systems (proc, sysfs, cgroup, tmpfs, …) are left out unless \
                `all` is true. `mount` limits the answer to the file system holding that path. \
                Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "mount": {"type": "string", "minLength": 1,
                        "description": "An absolute path: report only the file system that holds it (e.g. /var/lib/mysql)."},
                    "all": {"type": "boolean",
                        "description": "Include pseudo and in-memory file systems (default false)."}
                },
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
            let args: DisksArgs = match parse_args("disks", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let all = args.all.unwrap_or(false);
            let explicit = args.mount.is_some();
            // Every absolute path has a mount "holding" it; one that does not exist is a
            // mistake to report, not a reason to show the root file system.
            if let Some(path) = args.mount.as_deref().filter(|p| Path::new(p).is_absolute()) {
                let exists = tokio::select! {
                    r = tokio::fs::symlink_metadata(path) => r,
                    _ = ctx.cancel.cancelled() => return cancelled(),
                };
                if let Err(e) = exists
                    && e.kind() == std::io::ErrorKind::NotFound
                {
                    return ToolOutput::error(format!("`mount`: `{path}` does not exist"));
                }
            }
            let mounts = match select_mounts(host::mounts(), args.mount.as_deref(), all) {
                Ok(m) => m,
                Err(e) => return ToolOutput::error(e),
            };
            let measuring = futures_util::future::join_all(
                mounts
                    .into_iter()
                    .map(|m| measure(m, explicit, all, &ctx.cancel)),
            );
            let results = tokio::select! {
                r = measuring => r,
                _ = ctx.cancel.cancelled() => return cancelled(),
            };
            let mut report = DisksReport {
                filesystems: Vec::new(),
                errors: Vec::new(),
                truncated: false,
            };
            for (mount_point, measured) in results {
                match measured {
                    Measured::Fs(fs) => report.filesystems.push(fs),
                    Measured::Skip => {}
                    Measured::Failed(error) => {
                        report.errors.push(MountError { mount_point, error })
                    }
                }
            }
            if report.filesystems.len() > MAX_ROWS {
                report.filesystems.truncate(MAX_ROWS);
                report.truncated = true;
            }
            let ok = !report.filesystems.is_empty() || report.errors.is_empty();
            json_output(&report, ok)
        })
    }
}

/// Activity of one block device over the sampling interval.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskIoRow {
    pub device: String,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub read_bytes_per_sec: u64,
    pub write_bytes_per_sec: u64,
    /// Share of the interval the device had I/O in flight (`iostat`'s %util).
    pub util_pct: f64,
    /// Average time an I/O took (queue + service), `None` when there was none.
    pub await_ms: Option<f64>,
    /// I/Os in flight at the second reading.
    pub in_progress: u64,
}

/// What `disk_io` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskIoReport {
    pub sample_ms: u64,
    pub devices: Vec<DiskIoRow>,
    pub truncated: bool,
}

/// Rates between two `/proc/diskstats` readings `elapsed` apart.
pub fn io_rows(before: &[DiskStat], after: &[DiskStat], elapsed: Duration) -> Vec<DiskIoRow> {
    let secs = elapsed.as_secs_f64().max(0.001);
    let ms = secs * 1000.0;
    let before: HashMap<&str, &DiskStat> = before.iter().map(|d| (d.name.as_str(), d)).collect();
    after
        .iter()
        .filter_map(|now| {
            let then = before.get(now.name.as_str())?;
            let reads = now.reads.saturating_sub(then.reads);
            let writes = now.writes.saturating_sub(then.writes);
            let ios = reads + writes;
            let wait_ms = now.read_ms.saturating_sub(then.read_ms)
                + now.write_ms.saturating_sub(then.write_ms);
            let busy_ms = now.io_ms.saturating_sub(then.io_ms) as f64;
            Some(DiskIoRow {
                device: now.name.clone(),
                reads_per_sec: round1(reads as f64 / secs),
                writes_per_sec: round1(writes as f64 / secs),
                read_bytes_per_sec: (now.sectors_read.saturating_sub(then.sectors_read) as f64
                    * 512.0
                    / secs) as u64,
                write_bytes_per_sec: (now.sectors_written.saturating_sub(then.sectors_written)
                    as f64
                    * 512.0
                    / secs) as u64,
                util_pct: round1((busy_ms / ms * 100.0).min(100.0)),
                await_ms: (ios > 0).then(|| round2(wait_ms as f64 / ios as f64)),
                in_progress: now.in_progress,
            })
        })
        .collect()
}

/// Whether a device is listed by default: a whole disk (it has a `/sys/block` entry), not a
/// loop or RAM disk, that has done I/O since boot.
fn listed_by_default(d: &DiskStat) -> bool {
    !d.name.starts_with("loop")
        && !d.name.starts_with("ram")
        && d.reads + d.writes > 0
        && Path::new("/sys/block").join(&d.name).exists()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskIoArgs {
    #[serde(default)]
    sample_ms: Option<u64>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    all: Option<bool>,
}

pub struct DiskIo;

impl Tool for DiskIo {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "disk_io".into(),
            description: "Block device activity of this host sampled over a short interval from \
                /proc/diskstats (like `iostat -x`): reads/writes per second, bytes per second, \
                %util and average wait per I/O. Lists whole disks that have done I/O; `all` adds \
                partitions, loop and RAM devices. Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "sample_ms": {"type": "integer", "minimum": 100, "maximum": 5000,
                        "description": "Sampling interval in milliseconds (default 500)."},
                    "device": {"type": "string", "minLength": 1,
                        "description": "Only this device (e.g. sda, nvme0n1, dm-0)."},
                    "all": {"type": "boolean",
                        "description": "Include partitions, loop and RAM devices (default false)."}
                },
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
            let args: DiskIoArgs = match parse_args("disk_io", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let sample_ms = args.sample_ms.unwrap_or(DEFAULT_SAMPLE_MS).clamp(100, 5000);
            let all = args.all.unwrap_or(false);
            let device = args.device;
            let start = Instant::now();
            let before = host::diskstats();
            if before.is_empty() {
                return ToolOutput::error("cannot read /proc/diskstats");
            }
            if let Some(d) = &device
                && !before.iter().any(|s| &s.name == d)
            {
                let known: Vec<&str> = before
                    .iter()
                    .filter(|s| listed_by_default(s))
                    .map(|s| s.name.as_str())
                    .collect();
                return ToolOutput::error(format!(
                    "no block device `{d}` in /proc/diskstats (devices with I/O: {})",
                    known.join(", ")
                ));
            }
            if let Err(e) = pause(sample_ms, &ctx.cancel).await {
                return e;
            }
            let after = host::diskstats();
            let elapsed = start.elapsed();
            let keep: Vec<DiskStat> = match blocking("disk_io", &ctx.cancel, move || {
                after
                    .into_iter()
                    .filter(|d| match &device {
                        Some(name) => &d.name == name,
                        None => all || listed_by_default(d),
                    })
                    .collect()
            })
            .await
            {
                Ok(k) => k,
                Err(e) => return e,
            };
            let mut devices = io_rows(&before, &keep, elapsed);
            let truncated = devices.len() > MAX_ROWS;
            devices.truncate(MAX_ROWS);
            json_output(
                &DiskIoReport {
                    sample_ms,
                    devices,
                    truncated,
                },
                true,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: `disks {"mount": "/nonexistent"}` reported the root file system (every
    /// absolute path has a mount above it); a path that does not exist is an error now.
    #[tokio::test]
    async fn a_mount_path_that_does_not_exist_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("not-here");
        let ctx = || crate::tools::ToolContext {
            session_id: tether_proto::SessionId::from("s"),
            turn_id: tether_proto::TurnId::from("t"),
            cancel: CancellationToken::new(),
        };
        let out = DisksTool
            .call(json!({"mount": missing.display().to_string()}), ctx())
            .await;
        assert!(!out.ok, "{}", out.output);
        assert!(out.output.contains("does not exist"), "{}", out.output);
        let out = DisksTool
            .call(json!({"mount": dir.path().display().to_string()}), ctx())
            .await;
        assert!(out.ok, "{}", out.output);
    }

    fn mount(dev: &str, point: &str, fs: &str) -> Mount {
        Mount {
            device: dev.into(),
            mount_point: point.into(),
            fs_type: fs.into(),
            options: "rw".into(),
        }
    }

    #[test]
    fn mount_selection_hides_shadowed_and_pseudo_mounts() {
        let mounts = vec![
            mount("proc", "/proc", "proc"),
            mount("/dev/sda1", "/", "ext4"),
            mount("/dev/sdb1", "/data", "xfs"),
            mount("tmpfs", "/data", "tmpfs"),
            mount("/dev/sdc1", "/data/db", "ext4"),
            mount("overlay", "/var/lib/docker/overlay2/abc/merged", "overlay"),
        ];
        let sel = select_mounts(mounts.clone(), None, false).expect("ok");
        let points: Vec<&str> = sel.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(points, ["/", "/data/db"]);
        let all = select_mounts(mounts.clone(), None, true).expect("ok");
        assert_eq!(all.len(), 5);
        let holder = select_mounts(mounts.clone(), Some("/data/db/x/y"), false).expect("ok");
        assert_eq!(holder[0].device, "/dev/sdc1");
        let root = select_mounts(mounts.clone(), Some("/database"), false).expect("ok");
        assert_eq!(root[0].mount_point, "/");
        assert!(select_mounts(mounts, Some("relative"), false).is_err());
    }

    #[test]
    fn filesystem_figures_follow_df() {
        let st = host::FsStats {
            block_size: 4096,
            blocks: 1000,
            blocks_free: 150,
            blocks_available: 100,
            files: 200,
            files_free: 50,
        };
        let fs = filesystem_from(&mount("/dev/x", "/", "ext4"), &st);
        assert_eq!(fs.total_bytes, 4_096_000);
        assert_eq!(fs.used_bytes, 850 * 4096);
        assert_eq!(fs.available_bytes, 100 * 4096);
        // 850 / (850 + 100)
        assert_eq!(fs.used_pct, 89.5);
        assert_eq!(fs.inodes_used, 150);
        assert_eq!(fs.inodes_used_pct, Some(75.0));
    }

    #[test]
    fn io_rates_come_from_the_deltas() {
        let before =
            host::parse_diskstats(" 8 0 sda 100 0 2000 50 100 0 4000 150 0 100 200 0 0 0 0\n");
        let after =
            host::parse_diskstats(" 8 0 sda 150 0 3000 100 150 0 6000 250 2 600 400 0 0 0 0\n");
        let rows = io_rows(&before, &after, Duration::from_secs(1));
        let r = &rows[0];
        assert_eq!(r.reads_per_sec, 50.0);
        assert_eq!(r.writes_per_sec, 50.0);
        assert_eq!(r.read_bytes_per_sec, 1000 * 512);
        assert_eq!(r.write_bytes_per_sec, 2000 * 512);
        assert_eq!(r.util_pct, 50.0);
        // (50 + 100) ms over 100 I/Os
        assert_eq!(r.await_ms, Some(1.5));
        assert_eq!(r.in_progress, 2);
    }
}

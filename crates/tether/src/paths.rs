//! Where tether keeps things by default (XDG base directories).

use std::path::{Path, PathBuf};

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `$XDG_DATA_HOME/tether`, else `~/.local/share/tether`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tether");
    }
    match home() {
        Some(h) => h.join(".local/share/tether"),
        None => PathBuf::from("/var/lib/tether"),
    }
}

/// `$XDG_CONFIG_HOME/tether`, else `~/.config/tether`.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tether");
    }
    match home() {
        Some(h) => h.join(".config/tether"),
        None => PathBuf::from("/etc/tether"),
    }
}

/// The agent config read when `--config` is not given.
pub fn default_agent_config() -> PathBuf {
    config_dir().join("agent.toml")
}

/// Expands a leading `~/` and makes relative paths relative to `base` (the config file's
/// directory), so a config means the same thing whatever the working directory.
pub fn resolve(path: &Path, base: Option<&Path>) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(h) = home()
    {
        return h.join(rest);
    }
    if path.is_relative()
        && let Some(base) = base
    {
        return base.join(path);
    }
    path.to_owned()
}

//! Parsers for the Linux files [`HostMonitor`](crate::HostMonitor) reads:
//! `/proc/meminfo`, `/proc/self/status`, `/proc/self/cgroup` and the cgroup
//! v2 `memory.max`, `memory.current` and `memory.stat`.
//!
//! They take the text and never panic on any input (a fuzz target checks).

use crate::{Result, VramError};

/// What `/proc/meminfo` says, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable` (what can be allocated without swapping), or
    /// `MemFree` on kernels older than 3.14.
    pub available: u64,
}

fn parse_error(what: &str, reason: impl Into<String>) -> VramError {
    VramError::Parse {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// The value of `key` in a `Key:   123 kB` file (meminfo, status), in bytes.
pub fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != key {
            return None;
        }
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            None => Some(value),
            Some(unit) if unit.eq_ignore_ascii_case("kb") => value.checked_mul(1024),
            Some(_) => None,
        }
    })
}

/// Parse `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo> {
    let total = kb_field(text, "MemTotal").ok_or_else(|| parse_error("meminfo", "no MemTotal"))?;
    let available = kb_field(text, "MemAvailable")
        .or_else(|| kb_field(text, "MemFree"))
        .ok_or_else(|| parse_error("meminfo", "neither MemAvailable nor MemFree"))?;
    Ok(MemInfo {
        total,
        available: available.min(total),
    })
}

/// The cgroup v2 path of `/proc/self/cgroup` (its `0::` line), e.g.
/// `/user.slice/session-1.scope`; `None` where the process is not in a
/// cgroup v2 hierarchy.
pub fn parse_cgroup_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
}

/// Parse `memory.max`: `Some(bytes)`, or `None` for `max` (no limit).
pub fn parse_limit(text: &str) -> Result<Option<u64>> {
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| parse_error("memory.max", format!("{text:?}: {e}")))
}

/// Parse a file holding one byte count (`memory.current`).
pub fn parse_bytes(text: &str) -> Result<u64> {
    let text = text.trim();
    text.parse()
        .map_err(|e| parse_error("memory.current", format!("{text:?}: {e}")))
}

/// The value of `key` in `memory.stat` (`key value` lines), in bytes.
pub fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        if parts.next()? != key {
            return None;
        }
        parts.next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\nBuffers:           12 kB\n";

    #[test]
    fn meminfo_gives_total_and_available_in_bytes() {
        let info = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(info.total, 24_576_000 * 1024);
        assert_eq!(info.available, 20_000_000 * 1024);
    }

    #[test]
    fn meminfo_falls_back_to_memfree_and_rejects_garbage() {
        let old = "MemTotal: 100 kB\nMemFree: 40 kB\n";
        assert_eq!(parse_meminfo(old).unwrap().available, 40 * 1024);
        assert!(matches!(
            parse_meminfo("nothing here"),
            Err(VramError::Parse { .. })
        ));
        assert!(parse_meminfo("MemTotal: x kB\nMemFree: 1 kB").is_err());
        // A field in an unknown unit is not guessed at.
        assert_eq!(kb_field("MemTotal: 5 MB", "MemTotal"), None);
        // Overflow is refused rather than wrapped.
        assert_eq!(
            kb_field("MemTotal: 18446744073709551615 kB", "MemTotal"),
            None
        );
    }

    #[test]
    fn cgroup_files() {
        let text = "12:memory:/old\n0::/system.slice/app.service\n";
        assert_eq!(parse_cgroup_path(text), Some("/system.slice/app.service"));
        assert_eq!(parse_cgroup_path("1:cpu:/x\n"), None);
        assert_eq!(parse_limit("max\n").unwrap(), None);
        assert_eq!(parse_limit("1073741824\n").unwrap(), Some(1 << 30));
        assert!(parse_limit("lots").is_err());
        assert_eq!(parse_bytes(" 4096\n").unwrap(), 4096);
        let stat = "anon 100\nfile 300\ninactive_file 200\n";
        assert_eq!(stat_field(stat, "inactive_file"), Some(200));
        assert_eq!(stat_field(stat, "missing"), None);
    }

    #[test]
    fn status_rss() {
        let status = "Name:\tx\nVmRSS:\t    2048 kB\n";
        assert_eq!(kb_field(status, "VmRSS"), Some(2048 * 1024));
    }
}

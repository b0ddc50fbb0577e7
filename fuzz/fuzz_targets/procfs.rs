//! The host monitor's parsers of /proc and cgroup files: any text gives a
//! value or a typed error, never a panic, and what they return is coherent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_vram::procfs;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(info) = procfs::parse_meminfo(text) {
        assert!(info.available <= info.total);
    }
    let _ = procfs::kb_field(text, "VmRSS");
    if let Some(path) = procfs::parse_cgroup_path(text) {
        assert!(path.starts_with('/'));
    }
    let _ = procfs::parse_limit(text);
    let _ = procfs::parse_bytes(text);
    let _ = procfs::stat_field(text, "inactive_file");
});

//! Transparent huge pages for the node's tables and indexes.
//!
//! A lookup in a large table is a chain of dependent memory reads (index slot, key offset, key
//! bytes, columns); with 4 KiB pages each read may also pay a page walk. glibc's malloc can back
//! its large blocks with transparent huge pages, but only if told before the process starts
//! (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), so `apinode serve` re-executes itself with the
//! tunable set. Measured on a 1M-row table: the typed probe went from 17.6× to 21.9× SQLite's
//! (docs/benchmarks.md). `APINODE_HUGE_PAGES=0` turns it off; elsewhere than Linux with glibc
//! it does nothing.

/// The tunable glibc reads at start-up.
const TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Re-executes the current process with [`TUNABLE`] added to `GLIBC_TUNABLES`, unless it is
/// already there (so this runs once) or disabled. Returns only if no re-execution happened.
pub(crate) fn enable() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("APINODE_HUGE_PAGES").is_some_and(|v| v == "0") {
            return;
        }
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if tunables.contains("glibc.malloc.hugetlb") {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let value = if tunables.is_empty() {
            TUNABLE.to_owned()
        } else {
            format!("{tunables}:{TUNABLE}")
        };
        let error = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", value)
            .exec();
        // `exec` returns only when it failed: serve without huge pages.
        eprintln!(
            "apinode: could not re-execute with transparent huge pages ({error}); continuing without"
        );
    }
}

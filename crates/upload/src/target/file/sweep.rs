//! Temporary files of uploads that were killed.

use std::fs;
use std::path::{Path, PathBuf};

use crate::realisation::BUILD_TRACE_DIR;

/// A temporary file nobody wrote to for this long belongs to an upload
/// that died (a live upload writes continuously).
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Which names in a directory are temporary files.
type IsTemp = fn(&str) -> bool;

fn is_nar_temp(n: &str) -> bool {
    n.starts_with(".tmp-")
}

/// `.<name>.tmp.<pid>.w<n>`, as `atomic_write` and `write_temp` name them.
fn is_file_temp(n: &str) -> bool {
    n.starts_with('.') && n.contains(".tmp.")
}

/// Deletes temporary files left by uploads that were killed: `nar/.tmp-*`
/// (NARs) and `.<name>.tmp.*` (narinfos, listings, `log/` build logs,
/// `realisations/` and `build-trace-v2/<drv>/`), untouched for
/// [`STALE_TEMP_AGE`]. They are invisible to Nix, but a crash loop would
/// fill the disk with them. Best effort: a failure is logged, not fatal.
pub(super) fn sweep_stale_temps(root: &Path) {
    let mut dirs: Vec<(PathBuf, IsTemp)> = vec![
        (root.join("nar"), is_nar_temp),
        (root.to_owned(), is_file_temp),
        (root.join("log"), is_file_temp),
        (root.join("realisations"), is_file_temp),
    ];
    // One directory per content-addressed derivation.
    if let Ok(entries) = fs::read_dir(root.join(BUILD_TRACE_DIR)) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push((e.path(), is_file_temp));
            }
        }
    }
    let now = std::time::SystemTime::now();
    for (dir, is_temp) in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_str().is_some_and(is_temp) {
                continue;
            }
            let stale = entry
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.modified().ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= STALE_TEMP_AGE);
            if stale {
                match fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!(
                        "removed {}, left by an upload that was interrupted",
                        entry.path().display()
                    ),
                    Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
                }
            }
        }
    }
}

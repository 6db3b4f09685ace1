//! `nix-outbox-hook`: Nix's `post-build-hook`. Takes no arguments; reads
//! `DRV_PATH` and `OUT_PATHS`. Always exits 0, because a failing hook fails
//! the build it reports on.

use std::io::Write as _;
use std::sync::Mutex;

/// The last panic's message, captured by our panic hook so it can be
/// reported on the single stderr line instead of the default multi-line one.
static PANIC_MESSAGE: Mutex<String> = Mutex::new(String::new());

fn main() {
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut m) = PANIC_MESSAGE.lock() {
            *m = info.to_string();
        }
    }));
    let message = match std::panic::catch_unwind(nix_outbox_hook::run::run_from_env) {
        Ok(message) => message,
        Err(_) => Some(panic_line()),
    };
    if let Some(line) = message {
        // Nothing sensible is left to do when stderr is closed or full;
        // eprintln! would panic, and a panic here could fail the build.
        let _ = writeln!(
            std::io::stderr(),
            "{}",
            nix_outbox_hook::run::one_line(&line)
        );
    }
}

fn panic_line() -> String {
    let what = PANIC_MESSAGE
        .lock()
        .map(|m| m.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let drv =
        std::env::var_os("DRV_PATH").map_or_else(String::new, |d| d.to_string_lossy().into_owned());
    format!(
        "nix-outbox-hook: internal error ({what}); the outputs of {drv:?} may NOT be queued: \
         run `nix-outbox push` for them"
    )
}

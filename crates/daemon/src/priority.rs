//! The threads that upload run at a lower CPU priority than the builds
//! they share the machine with (`upload-nice`): hashing and compressing
//! an output while the next builds run took 10 % off a batch of 200 tiny
//! builds on two cores, and at a lower priority that work moves into the
//! gaps the builds leave (BENCHMARKS.md, "Without a hook"). The thread
//! that answers hooks is not one of them: a build waits for its answer.

use std::sync::Once;

/// Lowers the calling thread to nice `nice`, unless it is lower already
/// (a daemon started with a higher nice value keeps it: raising a
/// priority needs privileges, and would undo the administrator's choice).
/// Linux's nice value belongs to each thread, and threads started from
/// this one (the compressors') inherit it.
pub fn lower_this_thread(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: gettid and getpriority/setpriority on our own thread id
    // take no pointers and have no preconditions.
    let res = unsafe {
        let tid = libc::gettid() as libc::id_t;
        // -1 is a valid nice value: errno tells an error apart.
        *libc::__errno_location() = 0;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        if current == -1 && *libc::__errno_location() != 0 {
            Err(std::io::Error::last_os_error())
        } else if current >= nice {
            Ok(())
        } else if libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    if let Err(e) = res {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            tracing::warn!("cannot lower the upload threads' priority (upload-nice = {nice}): {e}")
        });
    }
}

/// The calling thread's nice value.
#[cfg(test)]
fn this_thread_nice() -> i32 {
    // SAFETY: as above.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread_and_never_raises() {
        let base = std::thread::spawn(this_thread_nice).join().unwrap();
        let target = (base + 5).min(19);
        let (lowered, child) = std::thread::spawn(move || {
            lower_this_thread(target);
            // A thread started from a lowered one inherits its value.
            let child = std::thread::spawn(this_thread_nice).join().unwrap();
            (this_thread_nice(), child)
        })
        .join()
        .unwrap();
        assert_eq!((lowered, child), (target, target));
        // The other threads keep theirs.
        assert_eq!(std::thread::spawn(this_thread_nice).join().unwrap(), base);
        // Asking for less than a thread has already changes nothing.
        let kept = std::thread::spawn(move || {
            lower_this_thread(target);
            lower_this_thread(target - 1);
            lower_this_thread(0);
            this_thread_nice()
        })
        .join()
        .unwrap();
        assert_eq!(kept, target);
    }
}

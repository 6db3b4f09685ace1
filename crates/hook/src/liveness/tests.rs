use std::process::{Child, Command};

use super::*;

fn write_for(dir: &Path, pid: u32, started: u64) {
    std::fs::write(path(dir), format!("{pid} {started}\n")).unwrap();
}

fn started_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    ProcStat::parse(&stat).unwrap().started
}

/// A child that is killed and reaped when the test ends, however it ends.
struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Sleeper {
        Sleeper(Command::new("sleep").arg("60").spawn().unwrap())
    }
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as libc::pid_t, sig) }, 0);
    }
    /// Waits (bounded) until the kernel reports the child's state as `want`.
    fn wait_state(&self, want: char) {
        for _ in 0..500 {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap();
            if ProcStat::parse(&stat).unwrap().state == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("child never reached state {want}");
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn proc_stat_fields_are_found_after_a_command_name_with_spaces_and_parens() {
    let mut fields = vec!["0"; 19];
    fields[18] = "123456";
    let stat = format!("42 (a) b) (c) S {} 7 8\n", fields.join(" "));
    assert_eq!(
        ProcStat::parse(&stat),
        Some(ProcStat {
            state: 'S',
            started: 123456
        })
    );
    assert_eq!(ProcStat::parse("42 (x) S 1 2"), None);
    assert_eq!(ProcStat::parse("no parenthesis"), None);
}

#[test]
fn without_a_heartbeat_nothing_is_known() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(check(dir.path(), SystemTime::now()), Liveness::Unknown);
    std::fs::write(path(dir.path()), "garbage").unwrap();
    assert_eq!(check(dir.path(), SystemTime::now()), Liveness::Unknown);
}

#[test]
fn a_fresh_beat_is_alive_and_a_stale_one_hung() {
    let dir = tempfile::tempdir().unwrap();
    let hb = Heartbeat::start(dir.path())
        .unwrap()
        .expect("Linux has /proc");
    hb.beat().unwrap();
    let now = SystemTime::now();
    assert_eq!(check(dir.path(), now), Liveness::Alive);
    match check(dir.path(), now + STALE + Duration::from_millis(500)) {
        Liveness::Hung(why) => assert!(why.contains("has not run for"), "{why}"),
        other => panic!("a stale heartbeat read as {other:?}"),
    }
    // A stop removes the file: hooks then connect and see.
    drop(hb);
    assert!(!path(dir.path()).exists());
    assert_eq!(check(dir.path(), now), Liveness::Unknown);
}

#[test]
fn a_stopped_daemon_is_hung_at_once_and_a_resumed_one_alive() {
    let dir = tempfile::tempdir().unwrap();
    let child = Sleeper::spawn();
    let pid = child.0.id();
    write_for(dir.path(), pid, started_of(pid));
    assert_eq!(check(dir.path(), SystemTime::now()), Liveness::Alive);
    child.signal(libc::SIGSTOP);
    child.wait_state('T');
    match check(dir.path(), SystemTime::now()) {
        Liveness::Hung(why) => assert!(why.contains("stopped"), "{why}"),
        other => panic!("a stopped process read as {other:?}"),
    }
    child.signal(libc::SIGCONT);
    child.wait_state('S');
    assert_eq!(check(dir.path(), SystemTime::now()), Liveness::Alive);
}

#[test]
fn a_dead_daemon_or_a_reused_pid_is_not_hung() {
    let dir = tempfile::tempdir().unwrap();
    let child = Sleeper::spawn();
    let pid = child.0.id();
    let started = started_of(pid);
    // The same pid, another start time: a different process.
    write_for(dir.path(), pid, started + 1);
    child.signal(libc::SIGSTOP);
    child.wait_state('T');
    assert_eq!(check(dir.path(), SystemTime::now()), Liveness::Unknown);
    // The daemon's process is gone (killed and reaped).
    write_for(dir.path(), pid, started);
    drop(child);
    assert_eq!(check(dir.path(), SystemTime::now()), Liveness::Unknown);
}

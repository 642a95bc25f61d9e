//! Looking for processes in the process table (`/proc`): the tool tests
//! check that a killed command left nothing behind.

use std::time::{Duration, Instant};

/// Command lines (NULs as spaces) of the processes whose command line
/// contains `marker`.
pub fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(marker))
        .collect()
}

/// Wait (bounded) until no process carries `marker`: the kernel may take a
/// moment to reap SIGKILLed orphans.
pub fn assert_no_process_with(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait (bounded) until a process carries `marker`: a command that printed
/// its first output may not have started the process it announced yet.
pub fn assert_process_with(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(marker).is_empty() {
        assert!(Instant::now() < deadline, "no process with {marker:?} appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

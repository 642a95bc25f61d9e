//! Credentials out of `/proc/<pid>/environ`.
//!
//! The kernel keeps the environment block a process was started with in
//! the process's memory, and `/proc/<pid>/environ` shows that block — not
//! the environment as it is now — to every process of the same user: to a
//! shell command the model runs, for one, whose parent is the host.
//! Unsetting or replacing a variable changes only libc's array of
//! pointers, never those bytes. So at start the host moves each credential
//! to the heap (libc's `setenv` copies it, and `std::env::var`, which is how
//! plugins read their keys, answers from the copy) and blanks its value in
//! the original block.
//!
//! What this does not stop: a process allowed to read the host's memory
//! (`/proc/<pid>/mem`, a debugger; root, or the same user where ptrace is
//! unrestricted) can still find a key the host holds. Run the host as its
//! own user (the systemd unit does) and its commands cannot.

use std::ffi::{CStr, OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;

use dispatch_contracts::protocol::secrets::looks_like_a_secret;

extern "C" {
    /// libc's environment: a null-terminated array of `NAME=value` strings.
    static environ: *const *const libc::c_char;
}

/// One credential as found in the original block.
struct Found {
    name: String,
    value: OsString,
    /// The `NAME=value` string in the block.
    entry: *const libc::c_char,
    /// Where its value starts, and how long it is.
    value_at: *mut u8,
    value_len: usize,
}

/// Blank, in the block `/proc/self/environ` shows, the value of every
/// variable whose name [looks like a credential](looks_like_a_secret),
/// after moving the variable to the heap. Answers the names blanked.
///
/// # Safety
///
/// Call it while the process has one thread and before anything has
/// kept a pointer from `getenv`: it changes the environment (as
/// `std::env::set_var` requires) and writes to the block libc's
/// `environ` pointed into when the process started.
pub unsafe fn hide_credentials() -> Vec<String> {
    let Some((start, end)) = env_block() else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries() {
        let addr = entry as usize;
        if addr < start || addr >= end {
            continue; // set after exec: not in the block /proc shows
        }
        // SAFETY: a non-null entry of `environ` is a NUL-terminated string.
        let bytes = unsafe { CStr::from_ptr(entry) }.to_bytes();
        let Some(eq) = bytes.iter().position(|&b| b == b'=') else { continue };
        let Ok(name) = std::str::from_utf8(&bytes[..eq]) else { continue };
        if !looks_like_a_secret(name) || eq + 1 == bytes.len() {
            continue;
        }
        found.push(Found {
            name: name.to_owned(),
            value: OsStr::from_bytes(&bytes[eq + 1..]).to_owned(),
            entry,
            // SAFETY: `eq + 1 < bytes.len()`: within the string.
            value_at: unsafe { entry.add(eq + 1) }.cast_mut().cast::<u8>(),
            value_len: bytes.len() - eq - 1,
        });
    }
    let mut hidden = Vec::new();
    for f in found {
        // `setenv` with overwrite: a fresh heap string replaces the pointer.
        std::env::set_var(&f.name, &f.value);
        // Only once nothing in `environ` points at the original (a name
        // given twice keeps its second entry, which is then left alone).
        if entries().any(|e| e == f.entry) {
            continue;
        }
        // SAFETY: the bytes are the value part of an environment string
        // in the process's own writable start-up block, which no
        // `environ` entry points at any more; single-threaded (above).
        unsafe { std::ptr::write_bytes(f.value_at, 0, f.value_len) };
        hidden.push(f.name);
    }
    hidden
}

/// The entries of `environ`, read as they are now.
fn entries() -> impl Iterator<Item = *const libc::c_char> {
    // SAFETY: `environ` is null or a null-terminated array; the callers are
    // single-threaded, so nothing changes it while it is walked.
    let mut p = unsafe { environ };
    std::iter::from_fn(move || {
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` is within the array, at or before its terminator.
        let entry = unsafe { *p };
        if entry.is_null() {
            return None;
        }
        // SAFETY: not the terminator yet, so the next slot exists.
        p = unsafe { p.add(1) };
        Some(entry)
    })
}

/// `[env_start, env_end)` of this process: fields 50 and 51 of
/// `/proc/self/stat` (proc(5)), counted after the parenthesised command
/// name, which may itself hold spaces.
fn env_block() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let start = fields.get(50 - 3)?.parse().ok()?;
    let end = fields.get(51 - 3)?.parse().ok()?;
    (start < end).then_some((start, end))
}

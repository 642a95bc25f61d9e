//! The file tools' `openat2` calls: opening relative to a directory handle
//! so that resolution can never leave it (`RESOLVE_BENEATH`), and — for the
//! read path that runs on the caller's thread — only from the kernel's
//! caches (`RESOLVE_CACHED`, `RWF_NOWAIT`), so a cold disk sends the call to
//! the blocking pool instead of stalling a shared worker.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `p` as a C string; a NUL inside is `InvalidInput`.
pub(crate) fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A system call's return value, with `-1` read as `errno`.
pub(crate) fn check(ret: i64) -> io::Result<i64> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat2(dir, path, flags, resolve)`; `dir` `None` is the process's
/// working directory (for an absolute `path`, irrelevant). `ENOSYS` before
/// Linux 5.6 (or under a seccomp filter that does not know the call).
pub(crate) fn openat2(dir: Option<&OwnedFd>, path: &Path, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let path = cstr(path)?;
    // SAFETY: all-zero is a valid open_how (no flags, no mode, no resolve).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    let dir = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `how` is a valid open_how of the size passed and the path is
    // NUL-terminated; the fd returned is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = check(fd)?;
    // SAFETY: just opened, owned by nothing else; a fd fits an i32.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What [`read_cached`] found.
pub(crate) enum Cached {
    /// A regular file read whole from the page cache.
    Whole { bytes: Vec<u8> },
    /// A regular file, open and contained, that is larger than asked for
    /// or not (all) in the page cache: read it with blocking calls.
    Open { file: File, size: u64 },
    /// Not a regular file (a directory, a FIFO, a device).
    Other,
}

/// Open `rel` beneath `root` and read it if it is a regular file of at
/// most `max` bytes whose pages are all cached — without a call that may
/// wait for a disk: every lookup and read is answered from the kernel's
/// caches or fails with `EAGAIN`. Symlinks anywhere in `rel` are refused
/// (`ELOOP`), so that the caller's checked path (which resolves and names
/// them) handles them.
///
/// The type is judged before anything is opened for reading: a probe
/// opened with `O_PATH` (which never runs a device's or a FIFO's open) is
/// inspected with `fstat`, and only a regular file is then opened for
/// reading — as the checked path stats before it opens. That open is
/// `O_NONBLOCK`, so a file under a lease refuses instead of waiting for the
/// lease to break.
#[cfg(target_os = "linux")]
pub(crate) fn read_cached(root: &Path, rel: &Path, max: u64) -> io::Result<Cached> {
    const RESOLVE: u64 = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_CACHED;
    let dir = openat2(None, root, libc::O_PATH | libc::O_DIRECTORY, libc::RESOLVE_CACHED)?;
    let meta = File::from(openat2(Some(&dir), rel, libc::O_PATH, RESOLVE)?).metadata()?;
    if !meta.file_type().is_file() {
        return Ok(Cached::Other);
    }
    let file =
        File::from(openat2(Some(&dir), rel, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, RESOLVE)?);
    // The size the probe saw; the handle's own is taken wherever the file
    // is handed on (`open`), in case it was replaced between the opens.
    let size = meta.len();
    let open = |file: File| -> io::Result<Cached> {
        let meta = file.metadata()?;
        Ok(if meta.file_type().is_file() { Cached::Open { file, size: meta.len() } } else { Cached::Other })
    };
    if size > max {
        return open(file);
    }
    // One byte more than the size: a file that grew is not read here.
    let want = usize::try_from(size).map_err(io::Error::other)? + 1;
    let mut bytes = vec![0u8; want];
    let iov = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: want };
    // SAFETY: one iovec over `want` writable bytes of `bytes`, which
    // outlives the call; a valid fd.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    match check(n as i64) {
        Ok(n) if n as u64 == size => {
            bytes.truncate(n as usize);
            Ok(Cached::Whole { bytes })
        }
        // Partly cached, or changed since the fstat: the blocking path
        // reads it from the start.
        Ok(_) => open(file),
        // Not cached, or a file system without non-blocking reads.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP)) => open(file),
        Err(e) => Err(e),
    }
}

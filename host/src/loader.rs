//! Opening one plugin library and checking that it is a plugin this host
//! can talk to, with an error an operator can act on for each way it can
//! fail.

use std::path::Path;

use abi_stable::library::{lib_header_from_path, LibraryError};
use dispatch_abi::ffi::{Manifest, PluginModRef, ABI_VERSION, ABI_VERSION_SYMBOL, CRATE_VERSION};

/// A library that passed every check, with its manifest read.
pub struct Loaded {
    /// The root module (function table).
    pub module: PluginModRef,
    /// What the plugin says about itself.
    pub manifest: Manifest,
}

/// Why a library could not be used. Every message names the cause; the
/// caller adds the file and (when known) the plugin id.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `dlopen` refused the file.
    #[error("not a loadable dynamic library: {0}")]
    Open(String),
    /// The library has no `dispatch_abi_version` symbol.
    #[error(
        "not a Dispatch plugin: the library does not export `dispatch_abi_version` \
         (plugins export it with `dispatch_abi::export_plugin!`)"
    )]
    NotAPlugin,
    /// The library exports no root module.
    #[error("not a Dispatch plugin: the library exports no root module (`dispatch_abi::export_plugin!` is missing)")]
    NoRootModule,
    /// The library was built for another ABI version.
    #[error(
        "built for Dispatch plugin ABI {plugin}, but this host speaks ABI {host}: \
         rebuild the plugin against dispatch-abi {crate_version}"
    )]
    AbiVersion {
        /// What the plugin was built for.
        plugin: u32,
        /// What the host speaks.
        host: u32,
        /// The host's dispatch-abi crate version.
        crate_version: &'static str,
    },
    /// abi_stable's layout check failed.
    #[error(
        "incompatible binary interface: the library claims plugin ABI {plugin} (this host speaks ABI {host}) \
         but its types do not match this host's dispatch-abi {crate_version}; it was built against a changed \
         or different copy of the interface — rebuild it against dispatch-abi {crate_version}. Details: {detail}"
    )]
    Layout {
        /// What the plugin claims.
        plugin: u32,
        /// What the host speaks.
        host: u32,
        /// The host's dispatch-abi crate version.
        crate_version: &'static str,
        /// The first lines of abi_stable's report.
        detail: String,
    },
    /// The library's root module refused to initialise or panicked.
    #[error("the library's root module failed to initialise: {0}")]
    Init(String),
    /// A pinned library whose bytes do not hash to the pin.
    #[error("{0}")]
    Pin(String),
    /// The library could not be read into its private copy.
    #[error("{0}")]
    Copy(String),
    /// Reading the manifest failed (the plugin's `manifest()` errored or panicked).
    #[error("reading the manifest failed: {0}")]
    Manifest(String),
    /// The manifest is unusable.
    #[error("invalid manifest: {0}")]
    BadManifest(String),
}

/// Copy the file into a sealed in-memory file, hashing it on the way:
/// answers the copy's `/proc/self/fd/N` path and the bytes' sha256. The
/// copy is a new file to the dynamic loader, so loading it never hands
/// back an earlier mapping of the same path (what an upgrade in a running
/// host needs), and nothing can change it after the hash.
fn private_copy(path: &Path) -> Result<(std::fs::File, std::path::PathBuf, String), LoadError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};

    let unreadable =
        |e: std::io::Error| LoadError::Copy(format!("cannot read the file to make its private copy: {e}"));
    let mut src = std::fs::File::open(path).map_err(unreadable)?;
    if !src.metadata().map_err(unreadable)?.is_file() {
        return Err(LoadError::Copy("not a regular file".into()));
    }
    // SAFETY: a NUL-terminated name and valid flags; the fd returned is
    // owned by the `File` built from it just below.
    // CLOEXEC: no process the host starts (a shell command, an MCP server)
    // inherits a descriptor per plugin.
    let fd = unsafe {
        libc::memfd_create(c"dispatch-plugin".as_ptr(), libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC)
    };
    if fd < 0 {
        return Err(LoadError::Copy(format!(
            "cannot make a private copy of the library: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut copy = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = src.read(&mut buf).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        copy.write_all(&buf[..n]).map_err(unreadable)?;
    }
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own, with a valid command.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(LoadError::Copy(format!(
            "cannot seal the private copy: {}",
            std::io::Error::last_os_error()
        )));
    }
    let actual = crate::config::hex(&hasher.finalize());
    let proc_path = std::path::PathBuf::from(format!("/proc/self/fd/{}", copy.as_raw_fd()));
    Ok((copy, proc_path, actual))
}

/// Load a private copy of the library at `path` (see [`private_copy`]);
/// answers it with the sha256 of the bytes loaded. With a `pin`, the
/// bytes must hash to it.
///
/// Every plugin is loaded from such a copy, never from its file: an
/// operator who updates a plugin with `cp new.so plugin.so` writes into the
/// very pages a running host has mapped, and the host then executes
/// whatever the new bytes hold at those addresses (it died with SIGSEGV,
/// cutting every live stream). The copy is a new file to the dynamic
/// loader, too, so loading it never hands back an earlier mapping of the
/// same path (what an upgrade in a running host needs).
///
/// The library stays loaded for the life of the process whatever happens:
/// abi_stable never unloads, and a half-initialised library is not safe to
/// `dlclose` anyway.
pub fn load(path: &Path, pin: Option<&str>) -> Result<(Loaded, String), LoadError> {
    let (file, copy, sha256) = private_copy(path)?;
    if let Some(pin) = pin.filter(|p| !p.trim().eq_ignore_ascii_case(&sha256)) {
        return Err(LoadError::Pin(format!(
            "sha256 mismatch: the configuration pins {} but the file is {sha256}; refusing a swapped binary",
            pin.trim()
        )));
    }
    let mut opened = false;
    let loaded = load_named(&copy, path, &mut opened);
    if opened {
        // Once the dynamic loader has opened `/proc/self/fd/N`, it knows
        // the library by that name and would hand it back for any later
        // file opened by the same name: the descriptor's number must
        // never be reused, so the descriptor is never closed (the library
        // is never unloaded anyway).
        std::mem::forget(file);
    } else {
        // Never opened (not a loadable file at all): free the copy.
        drop(file);
    }
    Ok((loaded?, sha256))
}

/// Load the library at `path`, whose errors name `named` instead: the
/// operator's file when `path` is its private copy, so that a dynamic
/// loader's message does not point at a `/proc/self/fd/N` nobody can look at.
fn load_named(path: &Path, named: &Path, opened: &mut bool) -> Result<Loaded, LoadError> {
    let open_error = |message: String| {
        if path == named {
            return LoadError::Open(message);
        }
        let shown = format!("{} (its private copy)", named.display());
        LoadError::Open(message.replace(&*path.to_string_lossy(), &shown))
    };
    // First, a plain `dlopen` to read the ABI version the plugin claims, so a
    // mismatch is reported in those terms before abi_stable's layout check.
    // SAFETY: loading runs the library's initialisers; loading operator-listed
    // plugins is the whole point of the host.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| open_error(e.to_string()))?;
    *opened = true;
    // SAFETY: `export_plugin!` defines this symbol as a `u32` static.
    let claimed = match unsafe { lib.get::<*const u32>(ABI_VERSION_SYMBOL) } {
        // SAFETY: the symbol's address points at that `u32` static, which lives
        // as long as the library (forever: see below).
        Ok(sym) => unsafe { **sym },
        Err(_) => {
            std::mem::forget(lib);
            return Err(match lib_header_from_path(path) {
                Err(LibraryError::GetSymbolError { .. }) => LoadError::NoRootModule,
                _ => LoadError::NotAPlugin,
            });
        }
    };
    // Never unload: abi_stable keeps its own handle leaked too.
    std::mem::forget(lib);
    let crate_version = CRATE_VERSION;
    if claimed != ABI_VERSION {
        return Err(LoadError::AbiVersion { plugin: claimed, host: ABI_VERSION, crate_version });
    }

    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => LoadError::NoRootModule,
        other => open_error(other.to_string()),
    })?;
    // Not `RootModule::load_from_file`: that caches one module per interface
    // type, and every plugin shares ours.
    let module = header.init_root_module::<PluginModRef>().map_err(|e| match e {
        LibraryError::AbiInstability(detail) => LoadError::Layout {
            plugin: claimed,
            host: ABI_VERSION,
            crate_version,
            detail: summarize(&detail.to_string()),
        },
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => {
            LoadError::Layout {
                plugin: claimed,
                host: ABI_VERSION,
                crate_version,
                detail: format!(
                    "it was built against dispatch-abi {actual_version}, this host has {expected_version}"
                ),
            }
        }
        LibraryError::RootModule { err, .. } => LoadError::Init(err.to_string()),
        other => LoadError::Init(other.to_string()),
    })?;

    let manifest = module.manifest()().into_result().map_err(|e| LoadError::Manifest(e.to_string()))?;
    validate(&manifest)?;
    Ok(Loaded { module, manifest })
}

fn validate(m: &Manifest) -> Result<(), LoadError> {
    let id = m.id.as_str();
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.');
    if !ok {
        return Err(LoadError::BadManifest(format!(
            "plugin id `{id}` must be 1-64 characters of a-z, 0-9, `-`, `_` or `.`"
        )));
    }
    if m.abi_version != ABI_VERSION {
        return Err(LoadError::AbiVersion {
            plugin: m.abi_version,
            host: ABI_VERSION,
            crate_version: CRATE_VERSION,
        });
    }
    Ok(())
}

/// abi_stable's layout reports run to hundreds of lines; keep the part that
/// says where the two layouts differ.
fn summarize(detail: &str) -> String {
    tracing::debug!("abi_stable layout report:\n{detail}");
    let tail = detail
        .find("error(s)inside:")
        .or_else(|| detail.find("error(s) inside:"))
        .map(|i| &detail[i..])
        .unwrap_or(detail);
    let lines: Vec<&str> = tail.lines().map(str::trim).filter(|l| !l.is_empty()).take(12).collect();
    lines.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn a_pin_is_checked_against_the_bytes_then_those_bytes_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.so");
        std::fs::write(&file, b"abc").unwrap();
        let wrong = "00".repeat(32);
        let err = load(&file, Some(&wrong)).err().unwrap();
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
        assert!(err.to_string().contains(ABC), "names the actual hash: {err}");
        // The right pin gets as far as dlopen of the private copy, which
        // refuses "abc" as a library: the copy is what is loaded.
        let err = load(&file, Some(ABC)).err().unwrap();
        let shown = format!("{} (its private copy)", file.display());
        assert!(matches!(err, LoadError::Open(ref m) if m.contains(&shown)), "{err}");
        assert!(!err.to_string().contains("/proc/self/fd/"), "{err}");
    }

    #[test]
    fn a_pinned_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), Some(ABC)).err().unwrap();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}

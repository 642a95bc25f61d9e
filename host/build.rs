//! Where the `dispatch` binary finds the shared Rust libraries at run time.
//!
//! The workspace links std dynamically and the bundled libraries share
//! `libdispatch_rt.so` (see `rt/src/lib.rs`), so the binary needs
//! `libstd-<hash>.so` and `libdispatch_rt.so` when it starts. Its run path
//! names, in order: `../lib/dispatch` beside an installed binary (README,
//! "Running it as a service"), `deps/` beside a binary in cargo's target
//! directory, and the toolchain's own library directory, so that
//! `./target/release/dispatch` runs straight from a build. Plugins need no run
//! path: by the time the host loads them, both libraries are in the process.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let mut dirs = vec!["$ORIGIN/../lib/dispatch".to_owned(), "$ORIGIN/deps".to_owned()];
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let target = std::env::var("TARGET").unwrap_or_default();
    let mut cmd = Command::new(rustc);
    cmd.args(["--print", "target-libdir"]);
    if !target.is_empty() {
        cmd.args(["--target", &target]);
    }
    match cmd.output() {
        Ok(out) if out.status.success() => {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dir.is_empty() {
                dirs.push(dir);
            }
        }
        // Without it the binary still runs under `cargo run` / `cargo test`
        // (cargo puts the toolchain's libraries on the search path) or with
        // the libraries installed beside it.
        _ => println!("cargo:warning=cannot ask rustc for its library directory; `dispatch` will need libstd on its library path"),
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", dirs.join(":"));
}

//! Tells the crate whether std is linked dynamically (`-C prefer-dynamic`),
//! i.e. whether this plugin may share std — and its panic hook — with the
//! host and other plugins. See `src/logging.rs`.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(dispatch_shared_std)");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    // Flags are separated by 0x1f; the option arrives as `-C` `prefer-dynamic`
    // (two flags) or as `-Cprefer-dynamic`.
    let shared = flags.split('\x1f').any(|f| {
        matches!(
            f.strip_prefix("-C").unwrap_or(f).trim(),
            "prefer-dynamic" | "prefer-dynamic=yes" | "prefer-dynamic=y"
        )
    });
    if shared {
        println!("cargo:rustc-cfg=dispatch_shared_std");
    }
}

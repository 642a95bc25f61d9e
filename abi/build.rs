//! Tells the crate whether std is linked dynamically (`-C prefer-dynamic`),
//! i.e. whether this plugin may share std — and its panic hook — with the
//! host and other plugins. See `src/logging.rs`.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(dispatch_shared_std)");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    // Flags are separated by 0x1f; `-C prefer-dynamic` arrives as two flags
    // or as `-Cprefer-dynamic`, optionally with `=yes`.
    let parts: Vec<&str> = flags.split('\x1f').collect();
    let shared = parts.iter().enumerate().any(|(i, f)| {
        let value = f
            .strip_prefix("-C")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .or_else(|| (*f == "-C" || *f == "--codegen").then(|| parts.get(i + 1).copied()).flatten());
        matches!(
            value,
            Some(
                "prefer-dynamic"
                    | "prefer-dynamic=yes"
                    | "prefer-dynamic=y"
                    | "prefer-dynamic=on"
                    | "prefer-dynamic=true"
            )
        )
    });
    if shared {
        println!("cargo:rustc-cfg=dispatch_shared_std");
    }
}

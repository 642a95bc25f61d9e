// `sqlx::migrate!` embeds ./migrations at compile time but cannot tell
// cargo to watch the directory on stable Rust: without this, a new
// migration file alone would not rebuild the store.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

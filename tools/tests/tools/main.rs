//! The standard tools, in process: each behaviour of the tools issue, on
//! real files in temporary directories and real child processes.
//! (`tests/e2e/tools.rs` runs them again through the real host.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod containment;
mod edit_file;
mod read_file;
mod shell;
mod support;
mod todo;
mod write_file;

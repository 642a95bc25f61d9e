//! The standard tools of Dispatch.
//!
//! Each tool is a plain [`dispatch_protocol::tool::Tool`], testable in
//! process; each ships as its own plugin (`plugins/tool-*`, a few lines on
//! top of `dispatch_contracts::tool::serve`) so an operator can leave any of
//! them out.
//!
//! | tool | plugin | concurrency-safe |
//! |---|---|---|
//! | `read_file` | `tool-read-file` | yes |
//! | `write_file` | `tool-write-file` | no |
//! | `edit_file` | `tool-edit-file` | no |
//! | `run_shell` | `tool-shell` | no |
//! | `todo_write` | `tool-todo` | no |
//!
//! Every file tool is contained to the turn's working directory
//! ([`contain::Workdir`]); bad input is an error result that says what was
//! wrong ([`input::parse`]).

mod at;
pub mod blocking;
pub mod contain;
pub mod edit_file;
pub mod input;
pub mod read_file;
pub mod shell;
pub mod todo;
pub mod write_file;

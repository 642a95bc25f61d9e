//! What this repository's tests share, as one crate instead of files
//! included by path: [`mock_openai`] (the local OpenAI-compatible server
//! the provider tests and benchmarks start on 127.0.0.1) and
//! [`process_table`] (checks that killed commands left nothing behind), and
//! [`http_client`] (a plain-HTTP client for driving `dispatch serve`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod http_client;
pub mod mock_openai;
pub mod process_table;

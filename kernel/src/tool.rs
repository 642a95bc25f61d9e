//! The tool contract the turn loop runs against (defined in
//! [`dispatch_protocol::tool`], where tool plugins find it too).

pub use dispatch_protocol::tool::{ImageRef, OutputSink, Tool, ToolContext, ToolError, ToolOutput};

//! The `vision` plugin's contract (types in [`dispatch_protocol::vision`],
//! re-exported here).

use dispatch_abi::Service;
pub use dispatch_protocol::vision::*;

/// The vision service: the session asks it what a model is shown of a
/// request's images.
pub const VISION: Service<VisionRequest, Viewed> = Service::new("vision", 1);

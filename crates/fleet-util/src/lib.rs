//! Small utilities the station and the emulator both use, so that neither has to import the
//! other.
//!
//! - [`shutdown`]: a cloneable shutdown signal for listeners, sessions and worker loops.
//! - [`token_bucket`]: the token bucket behind the station's rate limiter and the emulator's
//!   quotas.
//! - [`files`]: atomic file writes, and private (mode 0600) files for key material.

#![warn(unreachable_pub)]

pub mod files;
pub mod shutdown;
pub mod token_bucket;

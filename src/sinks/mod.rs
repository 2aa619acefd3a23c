//! Outbound destinations.
pub mod mllp;

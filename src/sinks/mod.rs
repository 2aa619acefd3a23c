//! Outbound destinations.
pub mod dmp;
pub mod mllp;

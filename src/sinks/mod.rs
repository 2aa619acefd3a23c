//! Outbound destinations.
pub mod dmp;
pub mod mllp;
pub mod mssante;

//! Inbound listeners.
pub mod mllp;

//! Inbound listeners.
pub mod accept;
pub mod mllp;

//! Inbound listeners.
pub mod accept;
pub mod fhir;
pub mod mllp;
pub mod results;

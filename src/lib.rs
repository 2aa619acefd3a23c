#![forbid(unsafe_code)]
pub mod hl7;

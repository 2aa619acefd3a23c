#![forbid(unsafe_code)]
pub mod hl7;
pub mod config;
pub mod model;
pub mod router;
pub mod store;
pub mod time;
pub mod ingest;
pub mod sinks;
pub mod sources;
pub mod admin;
pub mod server;

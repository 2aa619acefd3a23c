#![forbid(unsafe_code)]
pub mod admin;
pub mod config;
pub mod hl7;
pub mod ingest;
pub mod loadgen;
pub mod model;
pub mod pki;
pub mod policy;
pub mod router;
pub mod server;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;

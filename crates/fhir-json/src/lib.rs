//! FHIR R4 JSON, behind plain functions.
//!
//! fhirbolt's (de)serialisation is generic: whichever crate calls `fhirbolt::json::to_string`
//! on a `Bundle` compiles serde code for every R4 resource (minutes on two cores). This crate is
//! that one caller. Everything else in labroute builds the typed model (`r4`) and calls these
//! non-generic functions, so editing the mapping never recompiles the serde code
//! (DECISIONS D10).
#![forbid(unsafe_code)]

pub use fhirbolt::model::r4;

/// A resource could not be written or read as FHIR R4 JSON.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

/// Compact JSON of one resource (a `Bundle` is a resource).
pub fn to_json(resource: &r4::Resource) -> Result<String, Error> {
    fhirbolt::json::to_string(resource, None).map_err(|e| Error(e.to_string()))
}

/// Pretty-printed JSON of one resource, for people and snapshots.
pub fn to_json_pretty(resource: &r4::Resource) -> Result<String, Error> {
    fhirbolt::json::to_string_pretty(resource, None).map_err(|e| Error(e.to_string()))
}

/// Reads one resource of any type. fhirbolt 0.4 fails on `from_str::<Bundle>` of its own
/// output when a nested resource comes before a primitive, while reading into `Resource`
/// works, so this is the only entry point.
pub fn from_json(json: &[u8]) -> Result<r4::Resource, Error> {
    fhirbolt::json::from_slice(json, None).map_err(|e| Error(e.to_string()))
}

//! FHIR R4 JSON, behind plain functions.
//!
//! fhirbolt's (de)serialisation is generic: whichever crate calls `fhirbolt::json::to_string`
//! on a `Bundle` compiles serde code for every R4 resource (minutes on two cores). This crate is
//! that one caller. Everything else in labroute builds the typed model (`r4`) and calls these
//! non-generic functions, so editing the mapping never recompiles the serde code
//! (DECISIONS D10).
#![forbid(unsafe_code)]

pub use fhirbolt::model::r4;

/// A resource could not be written or read as FHIR R4 JSON. The messages name places in
/// the document, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or JSON that is not an R4 resource.
    #[error("{0}")]
    Unreadable(String),
    /// An empty array, which FHIR JSON forbids (and on which fhirbolt 0.4 panics); the path
    /// is FHIRPath-like: `Bundle.entry[2].resource.result`.
    #[error("{0}: an empty array is not allowed in FHIR JSON")]
    EmptyArray(String),
}

/// Compact JSON of one resource (a `Bundle` is a resource).
pub fn to_json(resource: &r4::Resource) -> Result<String, Error> {
    fhirbolt::json::to_string(resource, None).map_err(|e| Error::Unreadable(e.to_string()))
}

/// Pretty-printed JSON of one resource, for people and snapshots.
pub fn to_json_pretty(resource: &r4::Resource) -> Result<String, Error> {
    fhirbolt::json::to_string_pretty(resource, None).map_err(|e| Error::Unreadable(e.to_string()))
}

/// Reads one resource of any type. fhirbolt 0.4 fails on `from_str::<Bundle>` of its own
/// output when a nested resource comes before a primitive, while reading into `Resource`
/// works, so this is the only entry point.
///
/// fhirbolt 0.4 panics on an empty JSON array anywhere (`"extension": []`), so the document
/// is first read as plain JSON and refused with the array's path when it has one; and its
/// reader runs under `catch_unwind`, so that a panic not found yet is an error, not a lost
/// connection.
pub fn from_json(json: &[u8]) -> Result<r4::Resource, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| Error::Unreadable(format!("not JSON: {e}")))?;
    let root = value
        .get("resourceType")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("$");
    let mut path = root.to_owned();
    if empty_array(&value, &mut path) {
        return Err(Error::EmptyArray(path));
    }
    std::panic::catch_unwind(|| fhirbolt::json::from_slice(json, None))
        .map_err(|_| Error::Unreadable("the FHIR reader failed on this document".into()))?
        .map_err(|e| Error::Unreadable(e.to_string()))
}

/// Whether `v` holds an empty array; `path` is left at it when it does.
fn empty_array(v: &serde_json::Value, path: &mut String) -> bool {
    use serde_json::Value;
    let at = path.len();
    match v {
        Value::Array(items) if items.is_empty() => return true,
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                if empty_array(item, path) {
                    return true;
                }
                path.truncate(at);
            }
        }
        Value::Object(fields) => {
            for (k, item) in fields {
                path.push('.');
                // FHIR element names are short ASCII identifiers; anything else is not
                // echoed (a key could carry data).
                let name =
                    k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                path.push_str(if name { k } else { "*" });
                if empty_array(item, path) {
                    return true;
                }
                path.truncate(at);
            }
        }
        _ => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes on which fhirbolt 0.4's reader panics (found by probing): each is an error.
    #[test]
    fn documents_fhirbolt_panics_on_are_errors() {
        let cases = [
            (r#"{"resourceType":"Bundle","entry":[]}"#, "Bundle.entry"),
            (r#"{"resourceType":"Bundle","id":[]}"#, "Bundle.id"),
            (r#"{"resourceType":"Bundle","_id":[]}"#, "Bundle._id"),
            (
                r#"{"resourceType":"Patient","name":[{"given":[]}]}"#,
                "Patient.name[0].given",
            ),
            (
                r#"{"resourceType":"Patient","extension":[]}"#,
                "Patient.extension",
            ),
            (
                r#"{"resourceType":"Observation","valueString":[]}"#,
                "Observation.valueString",
            ),
            (
                r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","component":[{"valueQuantity":{"value":[]}}]}}]}"#,
                "Bundle.entry[0].resource.component[0].valueQuantity.value",
            ),
        ];
        for (doc, path) in cases {
            match from_json(doc.as_bytes()) {
                Err(Error::EmptyArray(p)) => assert_eq!(p, path),
                other => panic!("{doc}: {other:?}"),
            }
        }
        match from_json(br#"{"resourceType":"Patient","DUPONT Jean":[]}"#) {
            Err(Error::EmptyArray(p)) => assert_eq!(p, "Patient.*"),
            other => panic!("{other:?}"),
        }
        let deep = "[".repeat(100_000);
        assert!(matches!(
            from_json(deep.as_bytes()),
            Err(Error::Unreadable(_))
        ));
        assert!(from_json(br#"{"resourceType":"Patient","name":[{"given":["A"]}]}"#).is_ok());
    }
}

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
    empty_array(json)?;
    std::panic::catch_unwind(|| fhirbolt::json::from_slice(json, None))
        .map_err(|_| Error::Unreadable("the FHIR reader failed on this document".into()))?
        .map_err(|e| Error::Unreadable(e.to_string()))
}

/// Reads the document as plain JSON, without building it, and refuses it at its first
/// empty array (its path, rooted at the `resourceType`).
fn empty_array(json: &[u8]) -> Result<(), Error> {
    use serde::de::DeserializeSeed;
    let mut path = String::new();
    let found = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(json);
    let walked = Walk {
        path: &mut path,
        found: &found,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match walked {
        Ok(()) => Ok(()),
        Err(_) if found.get() => {
            // The error path only: read the root's type to name the array.
            let root = serde_json::from_slice::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v.get("resourceType")?.as_str().map(str::to_owned))
                .filter(|r| is_element_name(r))
                .unwrap_or_else(|| "$".into());
            Err(Error::EmptyArray(format!("{root}{path}")))
        }
        Err(e) => Err(Error::Unreadable(format!("not JSON: {e}"))),
    }
}

/// FHIR element and resource names are short ASCII identifiers; anything else is not
/// echoed in a path (a key could carry data).
fn is_element_name(k: &str) -> bool {
    k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Walks a JSON value; `path` is left at the first empty array (`found` set), which stops
/// the walk with an error.
struct Walk<'a> {
    path: &'a mut String,
    found: &'a std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use std::fmt::Write;
        let at = self.path.len();
        let mut n = 0usize;
        loop {
            self.path.truncate(at);
            let _ = write!(self.path, "[{n}]");
            let item = Walk {
                path: &mut *self.path,
                found: self.found,
            };
            if seq.next_element_seed(item)?.is_none() {
                break;
            }
            n += 1;
        }
        self.path.truncate(at);
        if n == 0 {
            self.found.set(true);
            return Err(serde::de::Error::custom("empty array"));
        }
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let at = self.path.len();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            self.path.truncate(at);
            self.path.push('.');
            self.path
                .push_str(if is_element_name(&key) { &key } else { "*" });
            map.next_value_seed(Walk {
                path: &mut *self.path,
                found: self.found,
            })?;
        }
        self.path.truncate(at);
        Ok(())
    }
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

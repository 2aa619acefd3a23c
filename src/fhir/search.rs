//! FHIR search over stored results, for the results server (`sources::results`): the query
//! (`patient.identifier`, `date`, `code`), and the choice of resources from the result
//! Bundles that `report::map_result` makes of the stored messages.
//!
//! What is chosen, per message, newest first:
//! - only resources about the patient the search names (`subject` is a `Patient` of that
//!   message whose identifiers match), a second guard behind the index, which leaves out
//!   messages about several patients;
//! - a report only in its latest version: a later message with a report of the same
//!   identifier (filler order number) replaces it, and a report whose latest version is
//!   `entered-in-error` (OBR-25 `D`) is gone, with its Observations;
//! - the resources the matches refer to (patient, order, specimen, performers, a report's
//!   Observations), once each, as `include`, unless withdrawn or about another patient.
//!
//! Nothing here reads the store or decides access: the caller hands in the Bundles of the
//! patients the practitioner may see (`access::decide`).

use std::collections::HashSet;

use serde_json::{Value, json};

use super::Zone;

/// The resource types the results server searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    DiagnosticReport,
    Observation,
}

impl Kind {
    /// The type a request path names (`/DiagnosticReport`), if searchable.
    pub fn of_path(path: &str) -> Option<Kind> {
        match path.trim_matches('/') {
            "DiagnosticReport" => Some(Kind::DiagnosticReport),
            "Observation" => Some(Kind::Observation),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DiagnosticReport => "DiagnosticReport",
            Kind::Observation => "Observation",
        }
    }
}

/// A token parameter's value: `system|code`, `|code` (no system) or `code` (any system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `None`: any system; `Some(None)`: no system; `Some(Some(s))`: that system.
    pub system: Option<Option<String>>,
    pub code: String,
}

impl Token {
    /// One value (the FHIR escapes `\|`, `\,`, `\$`, `\\` read); `None` when malformed or
    /// when it holds a control character (never in an identifier; the index's separators).
    fn parse(s: &str) -> Option<Token> {
        let parts = split_escaped(s, '|');
        let (system, code) = match parts.as_slice() {
            [code] => (None, unescape(code)),
            ["", code] => (Some(None), unescape(code)),
            [system, code] => (Some(Some(unescape(system))), unescape(code)),
            _ => return None,
        };
        let clean = |t: &str| !t.chars().any(char::is_control);
        (!code.is_empty()
            && clean(&code)
            && system
                .as_ref()
                .is_none_or(|s| s.as_deref().is_none_or(clean)))
        .then_some(Token { system, code })
    }

    /// Whether an Identifier or a Coding (`system` and `key`: `value` or `code`) matches.
    fn matches(&self, v: &Value, key: &str) -> bool {
        if v.get(key).and_then(Value::as_str) != Some(self.code.as_str()) {
            return false;
        }
        let system = v.get("system").and_then(Value::as_str);
        match &self.system {
            None => true,
            Some(s) => s.as_deref() == system,
        }
    }
}

/// `s` split at each `sep` not escaped by a backslash (the pieces keep their escapes).
fn split_escaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// FHIR search escapes read: `\x` is `x`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// A `date` comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

/// A `date` parameter: a prefix and the range its value stands for (Unix milliseconds,
/// start included, end excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateParam {
    pub prefix: Prefix,
    pub range: (i64, i64),
}

impl DateParam {
    /// FHIR's date search: the parameter's range against the target's.
    fn matches(&self, (lo, hi): (i64, i64)) -> bool {
        let (plo, phi) = self.range;
        let eq = plo <= lo && hi <= phi;
        match self.prefix {
            Prefix::Eq => eq,
            Prefix::Ne => !eq,
            // "The range above the search value intersects the range of the target value"
            // (and below, for lt); ge and le also take what eq takes (FHIR R4 §3.1.1.5.6).
            Prefix::Gt => hi > phi,
            Prefix::Lt => lo < plo,
            Prefix::Ge => hi > phi || eq,
            Prefix::Le => lo < plo || eq,
        }
    }
}

/// A search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub kind: Kind,
    /// `patient.identifier` (or `subject.identifier`): required, one value.
    pub patient: Token,
    /// Every one must hold.
    pub dates: Vec<DateParam>,
    /// Every parameter must hold; one of a parameter's comma-separated values.
    pub codes: Vec<Vec<Token>>,
}

/// A parameter the server cannot take. Names the parameter, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {problem}")]
pub struct QueryError {
    pub param: String,
    pub problem: &'static str,
}

fn query_err(param: &str, problem: &'static str) -> QueryError {
    // A parameter name comes from the client: keep it short and printable.
    let param: String = param
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect();
    QueryError { param, problem }
}

/// Reads a search's query string (`a=b&c=d`, percent-encoded; a `+` stays a `+`, so that a
/// zone offset `+01:00` is one). Times without a zone are in `zone`.
pub fn parse(kind: Kind, query: Option<&str>, zone: Zone) -> Result<Query, QueryError> {
    let mut patient = None;
    let mut dates = Vec::new();
    let mut codes = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = crate::model::percent_decode(name, false)
            .ok_or_else(|| query_err("(name)", "not valid percent-encoded UTF-8"))?;
        let value = crate::model::percent_decode(value, false)
            .ok_or_else(|| query_err(&name, "not valid percent-encoded UTF-8"))?;
        match name.as_str() {
            "patient.identifier" | "subject.identifier" => {
                if patient.is_some() {
                    return Err(query_err(&name, "give the patient once"));
                }
                if split_escaped(&value, ',').len() > 1 {
                    return Err(query_err(&name, "one patient identifier per search"));
                }
                patient = Some(
                    Token::parse(&value)
                        .ok_or_else(|| query_err(&name, "expected [system]|value"))?,
                );
            }
            "date" => dates.push(date_param(&value, zone).ok_or_else(|| {
                query_err(
                    &name,
                    "expected [eq|ne|gt|lt|ge|le]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][Z|+hh:mm]]]]",
                )
            })?),
            "code" => {
                let any: Option<Vec<Token>> = split_escaped(&value, ',')
                    .into_iter()
                    .map(Token::parse)
                    .collect();
                codes.push(any.ok_or_else(|| query_err(&name, "expected [system]|code[,…]"))?);
            }
            "_format" => {
                if !matches!(
                    value.as_str(),
                    "json" | "application/json" | "application/fhir+json"
                ) {
                    return Err(query_err(&name, "only JSON is served"));
                }
            }
            _ => return Err(query_err(&name, "parameter not supported here")),
        }
    }
    let patient = patient.ok_or_else(|| {
        query_err(
            "patient.identifier",
            "required: a search names one patient by an identifier",
        )
    })?;
    Ok(Query {
        kind,
        patient,
        dates,
        codes,
    })
}

fn date_param(s: &str, zone: Zone) -> Option<DateParam> {
    let (prefix, rest) = match s.get(..2) {
        Some("eq") => (Prefix::Eq, &s[2..]),
        Some("ne") => (Prefix::Ne, &s[2..]),
        Some("gt") => (Prefix::Gt, &s[2..]),
        Some("lt") => (Prefix::Lt, &s[2..]),
        Some("ge") => (Prefix::Ge, &s[2..]),
        Some("le") => (Prefix::Le, &s[2..]),
        _ => (Prefix::Eq, s),
    };
    Some(DateParam {
        prefix,
        range: range(rest, zone)?,
    })
}

/// The range a FHIR `date`, `dateTime` or `instant` stands for, in Unix milliseconds (start
/// included, end excluded): a day is the whole day, a time its minute, second or
/// millisecond. A date, or a time without a zone, is in `zone`.
fn range(s: &str, zone: Zone) -> Option<(i64, i64)> {
    let num = |a: usize, b: usize| -> Option<u32> {
        let p = s.get(a..b)?;
        p.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| p.parse().ok())?
    };
    let y4 = u16::try_from(num(0, 4)?).ok()?;
    let year = i64::from(y4);
    let sep = |i: usize, c: u8| s.as_bytes().get(i) == Some(&c);
    let month = if s.len() > 4 {
        if !sep(4, b'-') {
            return None;
        }
        Some(num(5, 7)?)
    } else {
        None
    };
    let day = if s.len() > 7 {
        if !sep(7, b'-') {
            return None;
        }
        Some(num(8, 10)?)
    } else {
        None
    };
    let m = month.unwrap_or(1);
    let d = day.unwrap_or(1);
    if !(1..=12).contains(&m) || d < 1 || d > u32::from(super::v2::days_in_month(y4, m as u8)) {
        return None;
    }
    let day_ms = 86_400_000i64;
    let start_day = crate::time::days_from_civil(year, m, d);
    let local_midnight_offset = |days: i64| -> i64 { offset_ms(zone, days, 0).unwrap_or(0) };
    if s.len() <= 10 {
        let end_day = match (month, day) {
            (None, _) => crate::time::days_from_civil(year + 1, 1, 1),
            (Some(_), None) if m == 12 => crate::time::days_from_civil(year + 1, 1, 1),
            (Some(_), None) => crate::time::days_from_civil(year, m + 1, 1),
            (Some(_), Some(_)) => start_day + 1,
        };
        return Some((
            start_day * day_ms - local_midnight_offset(start_day),
            end_day * day_ms - local_midnight_offset(end_day),
        ));
    }
    if !sep(10, b'T') || !sep(13, b':') {
        return None;
    }
    let hour = num(11, 13)?;
    let minute = num(14, 16)?;
    let mut i = 16;
    let (mut second, mut milli, mut width) = (0u32, 0u32, 60_000i64);
    if sep(16, b':') {
        second = num(17, 19)?;
        i = 19;
        width = 1_000;
        if sep(19, b'.') {
            let digits = s[20..].bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let f = &s[20..20 + digits];
            let padded = format!("{:0<3}", &f[..f.len().min(3)]);
            milli = padded.parse().ok()?;
            i = 20 + digits;
            // .2 stands for 100 ms, .25 for 10; beyond milliseconds, one.
            width = 10i64.pow(3u32.saturating_sub(digits as u32));
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let offset = match &s[i..] {
        "" => offset_ms(zone, start_day, hour)?,
        "Z" => 0,
        z => {
            let sign = match z.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, mm) = (z.get(1..3)?, z.get(4..6)?);
            if z.len() != 6
                || z.as_bytes().get(3) != Some(&b':')
                || !(h.bytes().chain(mm.bytes())).all(|c| c.is_ascii_digit())
            {
                return None;
            }
            let h: i64 = h.parse().ok()?;
            let mm: i64 = mm.parse().ok()?;
            if h > 14 || mm > 59 {
                return None;
            }
            sign * (h * 60 + mm) * 60_000
        }
    };
    let local = start_day * day_ms
        + i64::from(hour) * 3_600_000
        + i64::from(minute) * 60_000
        + i64::from(second) * 1_000
        + i64::from(milli);
    let start = local - offset;
    Some((start, start + width))
}

/// The offset of local time in `zone` on a day (days since 1970) at an hour, in ms.
fn offset_ms(zone: Zone, days: i64, hour: u32) -> Option<i64> {
    let (y, m, d) = crate::time::civil_from_days(days);
    let minutes = super::v2::zone_offset(
        zone,
        u16::try_from(y).ok()?,
        u8::try_from(m).ok()?,
        u8::try_from(d).ok()?,
        u8::try_from(hour).ok()?,
    );
    Some(i64::from(minutes) * 60_000)
}

/// The range of a resource's `effective[x]`.
fn effective(r: &Value, zone: Zone) -> Option<(i64, i64)> {
    if let Some(t) = r
        .get("effectiveDateTime")
        .or_else(|| r.get("effectiveInstant"))
        .and_then(Value::as_str)
    {
        return range(t, zone);
    }
    let p = r.get("effectivePeriod")?;
    let lo = match p.get("start").and_then(Value::as_str) {
        Some(t) => range(t, zone)?.0,
        None => i64::MIN,
    };
    let hi = match p.get("end").and_then(Value::as_str) {
        Some(t) => range(t, zone)?.1,
        None => i64::MAX,
    };
    Some((lo, hi))
}

/// Whether a resource meets the query's `date` and `code` parameters.
fn meets(q: &Query, r: &Value, zone: Zone) -> bool {
    if !q.dates.is_empty() {
        let Some(e) = effective(r, zone) else {
            return false;
        };
        if !q.dates.iter().all(|d| d.matches(e)) {
            return false;
        }
    }
    let codings = r
        .pointer("/code/coding")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    q.codes.iter().all(|any| {
        any.iter()
            .any(|t| codings.iter().any(|c| t.matches(c, "code")))
    })
}

/// One entry of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub full_url: String,
    pub resource: Value,
    /// `true`: a match; `false`: included because a match refers to it.
    pub matched: bool,
}

fn resource_type(r: &Value) -> &str {
    r.get("resourceType").and_then(Value::as_str).unwrap_or("")
}

fn reference(v: &Value) -> Option<&str> {
    v.get("reference").and_then(Value::as_str)
}

/// Every `reference` anywhere in a resource.
fn references<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("reference", Value::String(s)) => out.push(s),
                    _ => references(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

/// A report's version key: its first identifier (the filler order number), else none (a
/// report without an identifier is never replaced).
fn version_key(r: &Value) -> Option<String> {
    let i = r.pointer("/identifier/0")?;
    Some(format!(
        "{}|{}",
        i.get("system").and_then(Value::as_str).unwrap_or(""),
        i.get("value").and_then(Value::as_str)?
    ))
}

/// Chooses the answer's resources from result Bundles (`report::map_result`, as JSON), the
/// newest message first.
pub fn select(q: &Query, bundles: &[Value], zone: Zone) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let mut seen_urls: HashSet<String> = HashSet::new();
    let mut versions: HashSet<String> = HashSet::new();
    for bundle in bundles {
        let entries: Vec<(&str, &Value)> = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| Some((e.get("fullUrl")?.as_str()?, e.get("resource")?)))
                    .collect()
            })
            .unwrap_or_default();
        let patients: HashSet<&str> = entries
            .iter()
            .filter(|(_, r)| resource_type(r) == "Patient")
            .filter(|(_, r)| {
                r.get("identifier")
                    .and_then(Value::as_array)
                    .is_some_and(|ids| ids.iter().any(|i| q.patient.matches(i, "value")))
            })
            .map(|(u, _)| *u)
            .collect();
        if patients.is_empty() {
            continue;
        }
        let about = |r: &Value| {
            r.get("subject")
                .and_then(reference)
                .is_some_and(|s| patients.contains(s))
        };
        // Reports of this message that a newer version replaced, or that are withdrawn:
        // their Observations go with them.
        let mut gone: HashSet<&str> = HashSet::new();
        let mut reports: Vec<(&str, &Value)> = Vec::new();
        for (url, r) in &entries {
            if resource_type(r) != "DiagnosticReport" || !about(r) {
                continue;
            }
            let replaced = match version_key(r) {
                Some(k) => !versions.insert(k),
                None => false,
            };
            let withdrawn = r.get("status").and_then(Value::as_str) == Some("entered-in-error");
            if replaced || withdrawn {
                gone.insert(url);
                if let Some(results) = r.get("result").and_then(Value::as_array) {
                    gone.extend(results.iter().filter_map(reference));
                }
            } else {
                reports.push((url, r));
            }
        }
        let matches: Vec<(&str, &Value)> = match q.kind {
            Kind::DiagnosticReport => reports
                .into_iter()
                .filter(|(_, r)| meets(q, r, zone))
                .collect(),
            Kind::Observation => entries
                .iter()
                .filter(|(url, r)| {
                    resource_type(r) == "Observation"
                        && about(r)
                        && !gone.contains(url)
                        && r.get("status").and_then(Value::as_str) != Some("entered-in-error")
                        && meets(q, r, zone)
                })
                .copied()
                .collect(),
        };
        let mut included: Vec<&str> = Vec::new();
        for (url, r) in &matches {
            if seen_urls.insert((*url).to_owned()) {
                out.push(Found {
                    full_url: (*url).to_owned(),
                    resource: (*r).clone(),
                    matched: true,
                });
            }
            references(r, &mut included);
        }
        for url in included {
            // Never another patient's resource, nor one withdrawn (OBX-11 `D`).
            if let Some((u, r)) = entries.iter().find(|(u, _)| *u == url)
                && !gone.contains(u)
                && resource_type(r) != "MessageHeader"
                && r.get("status").and_then(Value::as_str) != Some("entered-in-error")
                && (r.get("subject").is_none() || about(r))
                && seen_urls.insert((*u).to_owned())
            {
                out.push(Found {
                    full_url: (*u).to_owned(),
                    resource: (*r).clone(),
                    matched: false,
                });
            }
        }
    }
    out
}

/// The searchset Bundle of an answer. The same query with nothing found (no such patient,
/// access denied, no result) always gives the same bytes.
pub fn searchset(self_url: &str, found: Vec<Found>) -> Value {
    let total = found.iter().filter(|f| f.matched).count();
    let mut b = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{ "relation": "self", "url": self_url }],
    });
    if !found.is_empty() {
        b["entry"] = Value::Array(
            found
                .into_iter()
                .map(|f| {
                    json!({
                        "fullUrl": f.full_url,
                        "resource": f.resource,
                        "search": { "mode": if f.matched { "match" } else { "include" } },
                    })
                })
                .collect(),
        );
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARIS: Zone = Zone::EuropeParis;
    const H: i64 = 3_600_000;

    fn ms(s: &str) -> i64 {
        range(s, Zone::Fixed(0)).expect(s).0
    }

    #[test]
    fn ranges_at_every_precision_and_zone() {
        // 2025-03-01 is in winter (+01:00), 2025-07-01 in summer (+02:00).
        let day = ms("2025-03-01");
        assert_eq!(range("2025-03-01", PARIS), Some((day - H, day + 23 * H)));
        let july = ms("2025-07-01");
        assert_eq!(
            range("2025-07-01", PARIS),
            Some((july - 2 * H, july + 22 * H))
        );
        assert_eq!(
            range("2025", Zone::Fixed(0)),
            Some((ms("2025"), ms("2026")))
        );
        assert_eq!(
            range("2025-12", Zone::Fixed(0)),
            Some((ms("2025-12"), ms("2026")))
        );
        assert_eq!(
            range("2024-02", Zone::Fixed(0)).map(|(a, b)| (b - a) / (24 * H)),
            Some(29)
        );
        let t = ms("2025-03-01T10:00Z");
        assert_eq!(t, day + 10 * H);
        assert_eq!(range("2025-03-01T10:00Z", PARIS), Some((t, t + 60_000)));
        assert_eq!(
            range("2025-03-01T11:00:00+01:00", PARIS),
            Some((t, t + 1_000))
        );
        assert_eq!(range("2025-03-01T11:00:00", PARIS), Some((t, t + 1_000)));
        assert_eq!(
            range("2025-03-01T10:00:00.25Z", PARIS),
            Some((t + 250, t + 260))
        );
        assert_eq!(
            range("2025-03-01T05:30:00-04:30", PARIS),
            Some((t, t + 1_000))
        );
        for bad in [
            "",
            "25",
            "2025-3-01",
            "2025-02-30",
            "2025-13",
            "2025-03-01T24:00Z",
            "2025-03-01T10",
            "2025-03-01T10:00:00.Z",
            "2025-03-01T10:00+0100",
            "2025-03-01T10:00:00X",
            "yesterday",
            "2025-03-01 10:00",
        ] {
            assert_eq!(range(bad, PARIS), None, "{bad}");
        }
    }

    #[test]
    fn date_prefixes_compare_ranges() {
        let p = |s: &str| date_param(s, Zone::Fixed(0)).expect(s);
        let march_1 = range("2025-03-01", Zone::Fixed(0)).expect("day");
        let noon = range("2025-03-01T12:00:00Z", Zone::Fixed(0)).expect("noon");
        assert!(p("2025-03-01").matches(noon));
        assert!(p("eq2025-03").matches(march_1));
        assert!(
            !p("2025-03-01T12:00Z").matches(march_1),
            "a day is not within a minute"
        );
        assert!(p("ne2025-03-02").matches(noon));
        assert!(!p("ne2025-03-01").matches(noon));
        assert!(p("gt2025-02-28").matches(noon) && !p("gt2025-03-01").matches(noon));
        assert!(p("lt2025-03-02").matches(noon) && !p("lt2025-03-01").matches(noon));
        assert!(p("ge2025-03-01").matches(noon) && !p("ge2025-03-02").matches(noon));
        assert!(p("le2025-03-01").matches(noon) && !p("le2025-02-28").matches(noon));
        assert_eq!(date_param("sa2025", PARIS), None);
        // A target that starts inside the day and ends after it: ge takes it (it goes on
        // above), le does not (it does not start below and is not within).
        let day = range("2025-03-01", Zone::Fixed(0)).expect("day");
        let across = (day.0 + 12 * H, day.1 + 12 * H);
        assert!(p("ge2025-03-01").matches(across));
        assert!(!p("le2025-03-01").matches(across));
        assert!(p("le2025-03-02").matches(across));
    }

    #[test]
    fn fractions_zones_and_old_dates() {
        let t = ms("2025-03-01T10:00:00Z");
        let z = Zone::Fixed(0);
        assert_eq!(range("2025-03-01T10:00:00.2Z", z), Some((t + 200, t + 300)));
        assert_eq!(
            range("2025-03-01T10:00:00.25Z", z),
            Some((t + 250, t + 260))
        );
        assert_eq!(
            range("2025-03-01T10:00:00.2500Z", z),
            Some((t + 250, t + 251))
        );
        for bad in [
            "2025-03-01T10:00+-1:00",
            "2025-03-01T10:00++1:00",
            "2025-03-01T10:00+1a:00",
        ] {
            assert_eq!(range(bad, z), None, "{bad}");
        }
        // Before 1970, in the configured zone (a birth date's time, an old specimen).
        assert_eq!(
            range("1960-06-15T12:00:00", PARIS),
            range("1960-06-15T10:00:00Z", z)
        );
    }

    #[test]
    fn tokens_read_escapes_and_refuse_control_characters() {
        assert_eq!(
            Token::parse("urn:x\\|y|a\\,b"),
            Some(Token {
                system: Some(Some("urn:x|y".into())),
                code: "a,b".into()
            })
        );
        assert_eq!(Token::parse("a|b|c"), None);
        assert_eq!(Token::parse("a\u{1e}b"), None);
        assert_eq!(Token::parse("s\u{1f}|b"), None);
        assert_eq!(split_escaped("a\\,b,c", ','), ["a\\,b", "c"]);
    }

    #[test]
    fn queries_read_and_refuse_by_name() {
        let q = parse(
            Kind::Observation,
            Some("patient.identifier=urn:oid:1.2.250.1.213.1.4.8%7C123&code=http://loinc.org|1,2&code=%7C3&date=ge2025&_format=json"),
            PARIS,
        )
        .expect("query");
        assert_eq!(
            q.patient,
            Token {
                system: Some(Some("urn:oid:1.2.250.1.213.1.4.8".into())),
                code: "123".into()
            }
        );
        assert_eq!(q.codes.len(), 2);
        assert_eq!(q.codes[0].len(), 2);
        assert_eq!(q.codes[1][0].system, Some(None));
        assert_eq!(q.dates[0].prefix, Prefix::Ge);
        let err = |qs: &str| parse(Kind::DiagnosticReport, Some(qs), PARIS).expect_err(qs);
        assert_eq!(err("").param, "patient.identifier");
        assert_eq!(err("code=1").param, "patient.identifier");
        assert_eq!(
            err("patient.identifier=1&patient.identifier=2").param,
            "patient.identifier"
        );
        assert_eq!(err("patient.identifier=a|").param, "patient.identifier");
        assert_eq!(err("patient.identifier=1&_count=2").param, "_count");
        assert_eq!(err("patient.identifier=1&_format=xml").param, "_format");
        assert_eq!(err("patient.identifier=%ZZ").param, "patient.identifier");
        let long = format!("patient.identifier=1&{}\u{7}=1", "x".repeat(100));
        assert_eq!(err(&long).param, "x".repeat(40));
    }

    #[test]
    fn only_the_searched_patients_resources_of_a_message() {
        // One message about two patients: the search for one never answers the other's.
        let bundle = json!({"resourceType": "Bundle", "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient",
                "identifier": [{"system": "urn:oid:1.2", "value": "A"}]}},
            {"fullUrl": "urn:uuid:p2", "resource": {"resourceType": "Patient",
                "identifier": [{"system": "urn:oid:1.2", "value": "B"}]}},
            {"fullUrl": "urn:uuid:r1", "resource": {"resourceType": "DiagnosticReport",
                "status": "final", "subject": {"reference": "urn:uuid:p1"},
                "result": [{"reference": "urn:uuid:o1"}]}},
            {"fullUrl": "urn:uuid:r2", "resource": {"resourceType": "DiagnosticReport",
                "status": "final", "subject": {"reference": "urn:uuid:p2"},
                "result": [{"reference": "urn:uuid:o2"}]}},
            {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observation",
                "status": "final", "subject": {"reference": "urn:uuid:p1"}}},
            {"fullUrl": "urn:uuid:o2", "resource": {"resourceType": "Observation",
                "status": "final", "subject": {"reference": "urn:uuid:p2"}}},
        ]});
        let q = |kind, id: &str| {
            parse(
                kind,
                Some(&format!("patient.identifier=urn:oid:1.2|{id}")),
                PARIS,
            )
            .expect("q")
        };
        let urls = |found: Vec<Found>| -> Vec<(String, bool)> {
            found.into_iter().map(|f| (f.full_url, f.matched)).collect()
        };
        let b = std::slice::from_ref(&bundle);
        assert_eq!(
            urls(select(&q(Kind::DiagnosticReport, "A"), b, PARIS)),
            vec![
                ("urn:uuid:r1".into(), true),
                ("urn:uuid:p1".into(), false),
                ("urn:uuid:o1".into(), false)
            ]
        );
        assert_eq!(
            urls(select(&q(Kind::Observation, "B"), b, PARIS)),
            vec![("urn:uuid:o2".into(), true), ("urn:uuid:p2".into(), false)]
        );
        assert!(select(&q(Kind::Observation, "C"), b, PARIS).is_empty());
    }
}

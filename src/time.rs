//! Wall-clock helpers (UTC). HL7 timestamps carry an explicit `+0000` offset.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A Unix time in milliseconds as UTC calendar fields.
struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    milli: u64,
}

impl Utc {
    fn of(ms: u64) -> Utc {
        let secs = ms / 1000;
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let s = secs % 86_400;
        Utc {
            year,
            month,
            day,
            hour: s / 3600,
            minute: s % 3600 / 60,
            second: s % 60,
            milli: ms % 1000,
        }
    }
}

/// `YYYYMMDDHHMMSS+0000` for a Unix time in milliseconds.
pub fn hl7_timestamp(ms: u64) -> String {
    let t = Utc::of(ms);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The UTC calendar date (year, month, day) of a Unix time in milliseconds.
pub fn ymd(ms: u64) -> (i64, u32, u32) {
    let t = Utc::of(ms);
    (t.year, t.month, t.day)
}

/// RFC 3339 for a Unix time in milliseconds (operator output).
pub fn rfc3339(ms: u64) -> String {
    let t = Utc::of(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's days-to-civil algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::hl7_timestamp(0), "19700101000000+0000");
        assert_eq!(
            super::hl7_timestamp(1_709_251_199_000),
            "20240229235959+0000"
        );
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn days_and_dates_round_trip() {
        for days in [-800_000i64, -1, 0, 1, 11_016, 19_782, 60_000, 2_000_000] {
            let (y, m, d) = super::civil_from_days(days);
            assert_eq!(super::days_from_civil(y, m, d), days);
        }
        assert_eq!(super::days_from_civil(2000, 2, 29), 11_016);
    }
}

//! Go-compatible time handling.
//!
//! Go's `time.Time` marshals as RFC3339Nano with trailing zeros of the fraction trimmed
//! (`2025-01-02T03:04:05.1234Z`, `2025-01-02T03:04:05Z`); the zero time is
//! `0001-01-01T00:00:00Z`. Use `#[serde(with = "shoal_types::time::gotime")]` on
//! `DateTime<Utc>` fields and `#[serde(with = "shoal_types::time::gotime_opt")]` on
//! `Option<DateTime<Utc>>` fields. Durations are plain `i64` nanoseconds (see [`SECOND`]).

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// One second in nanoseconds (Go `time.Second`).
pub const SECOND: i64 = 1_000_000_000;

/// Go's zero `time.Time` (`0001-01-01T00:00:00Z`).
pub fn zero_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

/// True for Go's zero time.
pub fn is_zero_time(t: &DateTime<Utc>) -> bool {
    *t == zero_time()
}

/// Current time (what the store stamps on writes).
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Format like Go's `time.Time.MarshalJSON` for a UTC time (RFC3339Nano, trailing zeros trimmed).
pub fn format_go(t: &DateTime<Utc>) -> String {
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond().min(999_999_999);
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parse any RFC 3339 timestamp (any offset, any fraction length) into UTC.
pub fn parse_go(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// serde adapter for `DateTime<Utc>`; `null`/`""` decode as the zero time.
pub mod gotime {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_go(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        match s.as_deref() {
            None | Some("") => Ok(zero_time()),
            Some(s) => parse_go(s).map_err(serde::de::Error::custom),
        }
    }
}

/// serde adapter for `Option<DateTime<Utc>>` (Go `*time.Time`); pair with
/// `#[serde(default, skip_serializing_if = "Option::is_none")]`.
pub mod gotime_opt {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_go(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        match s.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => parse_go(s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

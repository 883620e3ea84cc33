//! Pure types and rules: no I/O, no async. Time is always a parameter.

pub mod approval;
pub mod catalog;
pub mod delegation;
pub mod identity;
pub mod lifecycle;
pub mod model;
pub mod policy;
pub mod spiffe;
pub mod values;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 text of a UTC time, whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

//! `SpiffeId::parse` on arbitrary UTF-8.
//!
//! Beyond "never panics": an accepted ID is already in canonical form (the
//! parser validates, it does not rewrite), so its string form is the input
//! itself, parses again to an equal value, and satisfies every rule of the
//! SPIFFE ID specification the module documents.

#![no_main]

use halflife::attest::spiffe::{MAX_SPIFFE_ID_LEN, SpiffeId, validate_trust_domain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check(text);
    // Most random strings fail at the scheme; also try them behind it so the
    // trust-domain and path rules get exercised.
    if !text.starts_with("spiffe://") {
        check(&format!("spiffe://{text}"));
    }
});

fn check(text: &str) {
    let Ok(id) = SpiffeId::parse(text) else { return };
    let shown = id.to_string();
    assert_eq!(shown, text, "an accepted SPIFFE ID is printed exactly as given");
    assert!(shown.len() <= MAX_SPIFFE_ID_LEN);
    let again = SpiffeId::parse(&shown).unwrap_or_else(|e| panic!("{shown:?} printed from a parsed ID fails: {e}"));
    assert_eq!(again, id, "round trip through Display changes the ID");

    let td = id.trust_domain();
    assert!(!td.is_empty(), "empty trust domain accepted");
    assert!(td.len() <= 255, "trust domain longer than 255 bytes accepted");
    assert!(
        td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')),
        "trust domain {td:?} holds a character outside a-z 0-9 . - _"
    );
    assert_eq!(validate_trust_domain(td), Ok(()));

    let path = shown
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_prefix(td))
        .unwrap_or_else(|| panic!("{shown:?} does not start with spiffe://{td}"));
    assert!(path.starts_with('/') && path.len() > 1, "accepted ID {shown:?} names no workload path");
    for segment in path[1..].split('/') {
        assert!(!matches!(segment, "" | "." | ".."), "accepted ID {shown:?} has segment {segment:?}");
        assert!(
            segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
            "accepted ID {shown:?} has segment {segment:?} with a forbidden character"
        );
    }
}

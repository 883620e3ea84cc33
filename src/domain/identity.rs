//! People's identifiers as people read them. Separation of duties compares
//! names and email addresses, and two strings that look the same to a
//! reviewer must compare equal: `dana`, `ｄａｎａ` (full-width), `dаnа`
//! (Cyrillic а), `da\u{200b}na` (a zero-width space) and `DANA` are one
//! name here.
//!
//! Two identifiers are the same when their [`folded`] forms are equal:
//! NFKC normalisation, default-ignorable characters removed, lower-cased,
//! then the confusable skeleton of Unicode TS #39. Email addresses are
//! compared the same way after their local part loses any `+tag`
//! (`dana+approve@example.com` is Dana's address).
//!
//! Identifiers that people type for others to read (owner emails,
//! automation token names) are refused when they hold invisible characters
//! or mix scripts, so a look-alike cannot be registered in the first place;
//! and names written into audit records go through [`visible`], so an
//! invisible character that was stored before these checks shows.

use unicode_normalization::UnicodeNormalization;
use unicode_security::general_security_profile::IdentifierType;
use unicode_security::{GeneralSecurityProfile, MixedScript};

/// The comparison form of an identifier (see the module documentation).
pub fn folded(text: &str) -> String {
    let visible: String = text.nfkc().filter(|c| !is_invisible(*c)).collect();
    let lower = visible.to_lowercase();
    // Lower-casing `İ` gives `i` plus a combining dot above, which reads
    // as a plain `i`: the dot over a soft-dotted letter is its own dot.
    let mut undotted = String::with_capacity(lower.len());
    let mut previous = None;
    for c in lower.nfd() {
        if c == '\u{307}' && matches!(previous, Some('i' | 'j')) {
            continue;
        }
        undotted.push(c);
        previous = Some(c);
    }
    let renormalized: String = undotted.nfkc().collect();
    unicode_security::skeleton(&renormalized).collect()
}

/// Whether two identifiers read as the same one.
pub fn same(a: &str, b: &str) -> bool {
    folded(a.trim()) == folded(b.trim())
}

/// The comparison form of an email address: its local part without a
/// `+tag`, `@`, its domain, each [`folded`]. `None` when `text` is not an
/// address.
pub fn email_key(text: &str) -> Option<String> {
    let (local, domain) = text.trim().rsplit_once('@')?;
    let local = local.split_once('+').map_or(local, |(base, _)| base);
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some(format!("{}@{}", folded(local), folded(domain)))
}

/// Whether two email addresses reach the same person.
pub fn same_email(a: &str, b: &str) -> bool {
    match (email_key(a), email_key(b)) {
        (Some(a), Some(b)) => a == b,
        _ => same(a, b),
    }
}

/// A character that shows nothing (or nothing that a reader notices):
/// default-ignorable code points (zero-width space and joiners, soft
/// hyphen, variation selectors, bidirectional controls), other format
/// characters, and controls.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c.identifier_type(), Some(IdentifierType::Default_Ignorable))
        || matches!(c, '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}')
        || matches!(c, '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// Why `text`, an identifier others will read (`what` names it), is
/// refused: it holds an invisible character, or mixes scripts (Latin with
/// Cyrillic, say) in a way no real name does.
pub fn check_readable(what: &str, text: &str) -> Result<(), String> {
    if let Some(c) = text.chars().find(|c| is_invisible(*c)) {
        return Err(format!(
            "{what} contains an invisible or control character (U+{:04X}); write it with visible characters only",
            u32::from(c)
        ));
    }
    if !text.is_single_script() {
        return Err(format!(
            "{what} mixes characters of different scripts (such as Latin and Cyrillic letters that look alike); \
             write it in one script"
        ));
    }
    Ok(())
}

/// `text` with every invisible character written as `\u{…}`, for audit
/// records and messages: what a reader sees is what is there.
pub fn visible(text: &str) -> String {
    if !text.chars().any(is_invisible) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_names_are_the_same_name() {
        for alike in [
            "dana",
            "DANA",
            " dana ",
            "da\u{200b}na",
            "ｄａｎａ",
            "d\u{0430}n\u{0430}",
            "da\u{00ad}na",
            "\u{202e}dana",
            "dana\u{fe0f}",
        ] {
            assert!(same(alike, "dana"), "{alike:?} should read as dana");
        }
        assert!(same("ſam", "sam"), "long s");
        assert!(same("İvan", "ivan"), "dotted capital I");
        assert!(!same("dana", "dan"));
        assert!(!same("dana", "diana"));
        assert!(!same("josé", "jose"), "an accent is a different letter");
    }

    #[test]
    fn email_addresses_compare_without_tags_and_look_alikes() {
        assert!(same_email("dana.smith+approve@example.com", "Dana.Smith@Example.com"));
        assert!(same_email("dana+tech@example.com", "dana@example.com"));
        assert!(same_email("dana\u{200b}@example.com", "dana@example.com"));
        assert!(same_email("d\u{0430}na@example.com", "dana@example.com"));
        assert!(!same_email("dana@example.com", "dana@example.org"));
        assert!(!same_email("dan@example.com", "dana@example.com"));
        assert_eq!(email_key("no-at-sign"), None);
    }

    #[test]
    fn invisible_and_mixed_script_identifiers_are_refused() {
        assert!(check_readable("name", "dana.smith@example.com").is_ok());
        assert!(check_readable("name", "Zoë Ødegaard").is_ok());
        assert!(check_readable("name", "田中").is_ok());
        let invisible = check_readable("name", "dana\u{200b}").unwrap_err();
        assert!(invisible.contains("U+200B"), "{invisible}");
        assert!(check_readable("name", "da\u{00ad}na").is_err());
        assert!(check_readable("name", "d\u{0430}na").unwrap_err().contains("scripts"));
    }

    #[test]
    fn invisible_characters_are_shown_escaped() {
        assert_eq!(visible("dana"), "dana");
        assert_eq!(visible("dana\u{200b}"), "dana\\u{200b}");
        assert_eq!(visible("a\u{202e}b"), "a\\u{202e}b");
    }
}

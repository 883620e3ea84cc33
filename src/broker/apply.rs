//! `halflife apply`: the declarative load of owners, systems and grants.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::approval::{ApprovalRule, DEFAULT_MAX_APPROVAL, MAX_APPROVAL};
use crate::domain::catalog::{Catalog, DateSpec, OwnerSpec, SystemSpec};
use crate::domain::delegation::{HALFLIFE_ISSUER, OnBehalfOf, SubjectPattern};
use crate::domain::model::{Binding, Grant, OwnerStatus, Tier};
use crate::domain::values::{Audience, CredentialKind, GrantId, OwnerId, ScopeSet, SubjectMatch, SystemId};

/// A catalog file: TOML for `halflife apply`, the same shape as JSON for
/// `POST /v1/catalog`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyFile {
    #[serde(default)]
    pub owners: Vec<OwnerEntry>,
    #[serde(default)]
    pub systems: Vec<SystemEntry>,
    #[serde(default)]
    pub grants: Vec<GrantEntry>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerEntry {
    pub id: String,
    pub display_name: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// RFC 3339, or a duration counted from when the owner is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested_until: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemEntry {
    pub id: String,
    pub name: String,
    pub purpose: String,
    pub business_owner: String,
    pub technical_owner: String,
    pub tier: String,
    /// RFC 3339, or a duration counted from when the system is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pilot_ends_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_classification: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantEntry {
    pub id: String,
    pub system: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub default_scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    pub max_ttl: String,
    /// `optional` (default), `required`, `dpop` or `mtls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// Most targets (audiences, resources) one token may name (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_audiences: Option<u32>,
    /// Whom the workload may act for (delegation); absent: no one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_behalf_of: Vec<OnBehalfOfEntry>,
    /// `none` (default) or `required`: every exchange waits for a person's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Who may approve: groups or email addresses (default: anyone with the approver role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// The longest approval, e.g. "1h" (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_max_duration: Option<String>,
    /// Whether an owner of the system may approve (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_owner_approval: Option<bool>,
}

/// One `on_behalf_of` entry of a grant: subjects of `issuer` (a configured
/// issuer's name, or `halflife` for halflife's own access tokens) the
/// workload may act for, and claims they must carry.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnBehalfOfEntry {
    pub issuer: String,
    /// Exact subjects, `*`, or path prefixes ending in `/*`.
    pub subjects: Vec<String>,
    /// Claims the subject token must carry: `{ groups = "support" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<std::collections::BTreeMap<String, String>>,
}

/// Most targets a grant may let one token name.
pub const MAX_AUDIENCES: u32 = 16;

/// What a catalog must stay within.
pub struct Limits {
    /// Issuer names grants may refer to.
    pub issuers: Vec<String>,
    /// Database backends `postgres:<name>` kinds may refer to.
    pub backends: Vec<String>,
    /// The global credential lifetime ceiling.
    pub ceiling: Duration,
    /// Longest pilot; also bounds how far ahead an end date may be.
    pub max_pilot: Duration,
    /// Longest ownership attestation.
    pub recertify_every: Duration,
}

/// Whether a date spec stays within `max` of `now` (or of creation).
fn within(spec: DateSpec, now: OffsetDateTime, max: Duration) -> bool {
    match spec {
        DateSpec::At(t) => {
            now.checked_add(max.try_into().unwrap_or(time::Duration::MAX)).is_none_or(|limit| t <= limit)
        }
        DateSpec::OnCreate(d) => d <= max,
    }
}

/// Validates a parsed file into a catalog. Every problem is reported with
/// the entry and field it concerns.
pub fn validate(file: ApplyFile, limits: &Limits, now: OffsetDateTime) -> Result<Catalog, Vec<String>> {
    let known_issuers = limits.issuers.as_slice();
    let ceiling = limits.ceiling;
    let mut problems = Vec::new();
    let mut catalog = Catalog::default();
    let mut seen = HashSet::new();

    for (i, o) in file.owners.into_iter().enumerate() {
        let at = |field: &str| format!("owners[{i}].{field}");
        let id = OwnerId::parse(&o.id).map_err(|e| problems.push(format!("{}: {e}", at("id")))).ok();
        if id.as_ref().is_some_and(|id| !seen.insert(format!("owner/{id}"))) {
            problems.push(format!("{}: owner {} appears twice", at("id"), o.id));
        }
        let status = match o.status.as_deref() {
            None => Some(OwnerStatus::Active),
            Some(s) => OwnerStatus::parse(s).or_else(|| {
                problems.push(format!("{}: must be active or departed", at("status")));
                None
            }),
        };
        let attested_until = match o.attested_until.as_deref() {
            None => Some(DateSpec::OnCreate(limits.recertify_every)),
            Some(text) => date_spec(text).map_err(|e| problems.push(format!("{}: {e}", at("attested_until")))).ok(),
        };
        if attested_until.is_some_and(|d| !within(d, now, limits.recertify_every)) {
            problems.push(format!(
                "{}: more than lifecycle.recertify_every ({}) away",
                at("attested_until"),
                humantime::format_duration(limits.recertify_every)
            ));
        }
        if o.display_name.trim().is_empty() {
            problems.push(format!("{}: must not be empty", at("display_name")));
        }
        if !o.email.contains('@') || o.email.chars().any(char::is_whitespace) {
            problems.push(format!("{}: must be an email address", at("email")));
        }
        if let (Some(id), Some(status), Some(attested_until)) = (id, status, attested_until) {
            catalog.owners.push(OwnerSpec { id, display_name: o.display_name, email: o.email, status, attested_until });
        }
    }

    for (i, s) in file.systems.into_iter().enumerate() {
        let at = |field: &str| format!("systems[{i}].{field}");
        let id = SystemId::parse(&s.id).map_err(|e| problems.push(format!("{}: {e}", at("id")))).ok();
        if id.as_ref().is_some_and(|id| !seen.insert(format!("system/{id}"))) {
            problems.push(format!("{}: system {} appears twice", at("id"), s.id));
        }
        let business =
            OwnerId::parse(&s.business_owner).map_err(|e| problems.push(format!("{}: {e}", at("business_owner")))).ok();
        let technical = OwnerId::parse(&s.technical_owner)
            .map_err(|e| problems.push(format!("{}: {e}", at("technical_owner"))))
            .ok();
        let tier = Tier::parse(&s.tier).or_else(|| {
            problems.push(format!("{}: must be sandbox, pilot or production", at("tier")));
            None
        });
        let pilot_ends_at = match s.pilot_ends_at.as_deref() {
            None => None,
            Some(text) => match date_spec(text) {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(format!("{}: {e}", at("pilot_ends_at")));
                    None
                }
            },
        };
        if pilot_ends_at.is_some_and(|d| !within(d, now, limits.max_pilot)) {
            problems.push(format!(
                "{}: more than lifecycle.max_pilot ({}) away",
                at("pilot_ends_at"),
                humantime::format_duration(limits.max_pilot)
            ));
        }
        if matches!(tier, Some(Tier::Sandbox | Tier::Pilot)) && s.pilot_ends_at.is_none() {
            problems.push(format!(
                "{}: sandbox and pilot systems must have an end date (RFC 3339, or a duration such as \"30d\")",
                at("pilot_ends_at")
            ));
        }
        if s.name.trim().is_empty() {
            problems.push(format!("{}: must not be empty", at("name")));
        }
        if s.purpose.trim().is_empty() {
            problems.push(format!("{}: must say what the system is for", at("purpose")));
        }
        if let (Some(id), Some(business_owner), Some(technical_owner), Some(tier)) = (id, business, technical, tier) {
            catalog.systems.push(SystemSpec {
                id,
                name: s.name,
                purpose: s.purpose,
                business_owner,
                technical_owner,
                tier,
                pilot_ends_at,
                data_classification: s.data_classification.filter(|d| !d.trim().is_empty()),
            });
        }
    }

    for (i, g) in file.grants.into_iter().enumerate() {
        match grant(g, known_issuers, &limits.backends, ceiling) {
            Ok(grant) => {
                if !seen.insert(format!("grant/{}", grant.id)) {
                    problems.push(format!("grants[{i}].id: grant {} appears twice", grant.id));
                }
                catalog.grants.push(grant);
            }
            Err(errs) => problems.extend(errs.into_iter().map(|(field, e)| format!("grants[{i}].{field}: {e}"))),
        }
    }
    if problems.is_empty() { Ok(catalog) } else { Err(problems) }
}

pub fn grant(
    g: GrantEntry,
    known_issuers: &[String],
    known_backends: &[String],
    ceiling: Duration,
) -> Result<Grant, Vec<(&'static str, String)>> {
    let mut errs = Vec::new();
    let approval = approval_rule(&g, &mut errs);
    let id = GrantId::parse(&g.id).map_err(|e| errs.push(("id", e.0))).ok();
    let system = SystemId::parse(&g.system).map_err(|e| errs.push(("system", e.0))).ok();
    if !known_issuers.contains(&g.issuer) {
        errs.push((
            "issuer",
            format!("{:?} is not a configured issuer (known: {})", g.issuer, known_issuers.join(", ")),
        ));
    }
    let subject = SubjectMatch::parse(&g.subject).map_err(|e| errs.push(("subject", e.0))).ok();
    let mut audiences = Vec::new();
    for a in &g.audiences {
        match Audience::parse(a) {
            Ok(a) if audiences.contains(&a) => errs.push(("audiences", format!("{a} appears twice"))),
            Ok(a) => audiences.push(a),
            Err(e) => errs.push(("audiences", e.0)),
        }
    }
    if g.audiences.is_empty() {
        errs.push(("audiences", "list at least one audience".into()));
    }
    let scopes = ScopeSet::from_list(&g.scopes).map_err(|e| errs.push(("scopes", e.0))).ok();
    let default_scopes = ScopeSet::from_list(&g.default_scopes).map_err(|e| errs.push(("default_scopes", e.0))).ok();
    if let (Some(scopes), Some(defaults)) = (&scopes, &default_scopes) {
        let outside: Vec<_> = defaults.outside(scopes).map(|s| s.to_string()).collect();
        if !outside.is_empty() {
            errs.push(("default_scopes", format!("{} not in scopes", outside.join(" "))));
        }
    }
    let kinds = match g.kinds {
        None => vec![CredentialKind::Jwt],
        Some(list) if list.is_empty() => {
            errs.push(("kinds", "list at least one credential kind".into()));
            Vec::new()
        }
        Some(list) => list
            .iter()
            .filter_map(|k| match CredentialKind::parse(k) {
                Ok(CredentialKind::Postgres(backend)) if !known_backends.contains(&backend) => {
                    errs.push(("kinds", format!("{k:?} names no configured [[postgres_backends]] entry")));
                    None
                }
                Ok(kind) => Some(kind),
                Err(e) => {
                    errs.push(("kinds", e.0));
                    None
                }
            })
            .collect(),
    };
    let max_ttl = match humantime::parse_duration(&g.max_ttl) {
        Ok(d) if d.is_zero() => {
            errs.push(("max_ttl", "must be greater than zero".into()));
            None
        }
        Ok(d) if d > ceiling => {
            errs.push((
                "max_ttl",
                format!(
                    "{} exceeds the global ceiling tokens.max_ttl ({})",
                    g.max_ttl,
                    humantime::format_duration(ceiling)
                ),
            ));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(("max_ttl", format!("{e}; write it like 15m or 1h")));
            None
        }
    };
    if let Some(n) = g.max_audiences
        && (n == 0 || n > MAX_AUDIENCES)
    {
        errs.push(("max_audiences", format!("must be between 1 and {MAX_AUDIENCES}")));
    }
    let mut on_behalf_of = Vec::new();
    for entry in &g.on_behalf_of {
        if entry.issuer != HALFLIFE_ISSUER && !known_issuers.contains(&entry.issuer) {
            errs.push((
                "on_behalf_of",
                format!(
                    "{:?} is neither a configured issuer nor {HALFLIFE_ISSUER} (known: {})",
                    entry.issuer,
                    known_issuers.join(", ")
                ),
            ));
        }
        if entry.subjects.is_empty() {
            errs.push(("on_behalf_of", "each entry lists at least one subject (\"*\" for any)".into()));
        }
        let subjects: Vec<SubjectPattern> = entry
            .subjects
            .iter()
            .filter_map(|s| SubjectPattern::parse(s).map_err(|e| errs.push(("on_behalf_of", e.0))).ok())
            .collect();
        let claims = entry.claims.clone().unwrap_or_default();
        if claims.keys().any(|k| k.is_empty() || k.len() > 64) {
            errs.push(("on_behalf_of", "claim names are 1-64 characters".into()));
        }
        on_behalf_of.push(OnBehalfOf { issuer: entry.issuer.clone(), subjects, claims });
    }
    let binding = match g.binding.as_deref() {
        None => Binding::Optional,
        Some(text) => Binding::parse(text).unwrap_or_else(|| {
            errs.push(("binding", format!("{text:?} is not one of optional, required, dpop, mtls")));
            Binding::Optional
        }),
    };
    match (id, system, subject, scopes, default_scopes, max_ttl) {
        (Some(id), Some(system), Some(subject), Some(scopes), Some(default_scopes), Some(max_ttl))
            if errs.is_empty() =>
        {
            Ok(Grant {
                id,
                system,
                issuer: g.issuer,
                subject,
                audiences,
                scopes,
                default_scopes,
                kinds,
                max_ttl,
                binding,
                max_audiences: g.max_audiences.unwrap_or(1),
                on_behalf_of,
                approval,
            })
        }
        _ => Err(errs),
    }
}

/// A grant entry's approval rule: `approval = "required"` with its
/// approvers, longest approval and whether owners may approve.
fn approval_rule(g: &GrantEntry, errs: &mut Vec<(&'static str, String)>) -> Option<ApprovalRule> {
    let required = match g.approval.as_deref() {
        None | Some("none") => false,
        Some("required") => true,
        Some(other) => {
            errs.push(("approval", format!("{other:?} is not none or required")));
            false
        }
    };
    let max_duration = match g.approval_max_duration.as_deref().map(humantime::parse_duration) {
        None => DEFAULT_MAX_APPROVAL,
        Some(Ok(d)) if !d.is_zero() && d <= MAX_APPROVAL => d,
        Some(Ok(_)) => {
            errs.push(("approval_max_duration", "must be between 1s and 7d".into()));
            DEFAULT_MAX_APPROVAL
        }
        Some(Err(e)) => {
            errs.push(("approval_max_duration", format!("{e}; write it like 1h")));
            DEFAULT_MAX_APPROVAL
        }
    };
    for approver in &g.approvers {
        if approver.trim().is_empty() || approver.len() > 256 || approver.chars().any(char::is_control) {
            errs.push(("approvers", "each approver is a group name or an email address of 1-256 characters".into()));
        }
    }
    if !required && (!g.approvers.is_empty() || g.approval_max_duration.is_some() || g.allow_owner_approval.is_some()) {
        errs.push((
            "approval",
            "approvers, approval_max_duration and allow_owner_approval need approval = \"required\"".into(),
        ));
    }
    required.then(|| ApprovalRule {
        approvers: g.approvers.clone(),
        max_duration,
        allow_owner_approval: g.allow_owner_approval.unwrap_or(false),
    })
}

fn date_spec(text: &str) -> Result<DateSpec, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(DateSpec::At(t));
    }
    humantime::parse_duration(text)
        .map(DateSpec::OnCreate)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration such as \"30d\""))
}

/// Parses apply-file TOML.
pub fn parse(text: &str) -> Result<ApplyFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            issuers: vec!["dev".into()],
            backends: Vec::new(),
            ceiling: Duration::from_secs(3600),
            max_pilot: Duration::from_secs(90 * 86400),
            recertify_every: Duration::from_secs(90 * 86400),
        }
    }
    const NOW: OffsetDateTime = time::macros::datetime!(2026-06-01 00:00 UTC);

    #[test]
    fn example_file_validates() {
        let text = std::fs::read_to_string("config/dev-catalog.toml").unwrap();
        let catalog = validate(parse(&text).unwrap(), &limits(), NOW).unwrap();
        assert!(!catalog.grants.is_empty());
        assert!(!catalog.systems.is_empty());
    }

    #[test]
    fn problems_name_entry_and_field() {
        let text = r#"
            [[systems]]
            id = "Bad Id"
            name = "x"
            purpose = "y"
            business_owner = "a"
            technical_owner = "b"
            tier = "pilot"

            [[grants]]
            id = "g"
            system = "s"
            issuer = "nowhere"
            subject = "spiffe://td/*/x"
            audiences = []
            scopes = ["a"]
            default_scopes = ["b"]
            max_ttl = "2h"
        "#;
        let problems = validate(parse(text).unwrap(), &limits(), NOW).unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "systems[0].id",
            "systems[0].pilot_ends_at",
            "grants[0].issuer",
            "grants[0].subject",
            "grants[0].audiences",
            "grants[0].default_scopes",
            "grants[0].max_ttl",
        ] {
            assert!(all.contains(expected), "missing {expected} in:\n{all}");
        }
    }

    #[test]
    fn dates_beyond_the_lifecycle_limits_are_refused() {
        let text = r#"
            [[owners]]
            id = "a"
            display_name = "A"
            email = "a@example.com"
            attested_until = "2027-06-01T00:00:00Z"

            [[systems]]
            id = "s"
            name = "S"
            purpose = "p"
            business_owner = "a"
            technical_owner = "a"
            tier = "pilot"
            pilot_ends_at = "91d"
        "#;
        let all = validate(parse(text).unwrap(), &limits(), NOW).unwrap_err().join("\n");
        assert!(all.contains("owners[0].attested_until"), "{all}");
        assert!(all.contains("systems[0].pilot_ends_at"), "{all}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(parse("[[owners]]\nid = \"a\"\nnickname = \"x\"\n").is_err());
    }
}

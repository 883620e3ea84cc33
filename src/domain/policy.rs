//! The exchange decision: what a workload may have, given its grant, its
//! system and what it asked for. Pure: no I/O, time is a parameter.
//!
//! Least privilege by construction: the issued audience, scopes and lifetime
//! are within what was asked and what was granted; asking for more is an
//! error, never a silent widening or clamp.

use std::time::Duration;

use time::OffsetDateTime;

use super::model::{GrantContext, Owner, System, SystemState};
use super::values::{Audience, CredentialKind, ScopeSet};

/// The RFC 6749 §5.2 / RFC 8693 §2.2.2 error a denial maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode {
    InvalidRequest,
    InvalidGrant,
    InvalidScope,
    InvalidTarget,
    UnauthorizedClient,
    AccessDenied,
    /// The client certificate is not a valid X.509-SVID (RFC 6749 §5.2).
    InvalidClient,
    /// A DPoP proof is missing, invalid or replayed (RFC 9449 §5).
    InvalidDpopProof,
    /// The access request lapsed undecided (RFC 8628 §3.5).
    ExpiredToken,
}

impl DenyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidGrant => "invalid_grant",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::AccessDenied => "access_denied",
            Self::InvalidClient => "invalid_client",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::ExpiredToken => "expired_token",
        }
    }
}

/// A refusal: `description` is for the caller, `reason` for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: DenyCode,
    pub description: String,
    pub reason: String,
}

impl Denial {
    pub fn new(code: DenyCode, description: impl Into<String>) -> Self {
        let description = description.into();
        Self { code, reason: description.clone(), description }
    }

    /// A denial whose internal reason says more than the caller is told.
    pub fn with_reason(code: DenyCode, description: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { code, description: description.into(), reason: reason.into() }
    }
}

/// What the caller asked for, already parsed.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// The targets named by `audience` and `resource` (RFC 8693 §2.1, RFC
    /// 8707), in order, without repeats; empty when none was named.
    pub targets: Vec<Audience>,
    pub scopes: Option<ScopeSet>,
    pub requested_ttl: Option<Duration>,
    pub kind: Option<CredentialKind>,
}

/// Lifetime limits from the operator's configuration.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    pub default_ttl: Duration,
    /// The global ceiling, whatever a grant says.
    pub ceiling: Duration,
}

/// What will be issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The token's targets: what was asked, or the grant's one audience.
    pub audiences: Vec<Audience>,
    pub scopes: ScopeSet,
    pub kind: CredentialKind,
    pub iat: OffsetDateTime,
    pub exp: OffsetDateTime,
}

/// Why the system may not receive credentials now, if it may not.
pub fn operating_refusal(system: &System, owners: [&Owner; 2], now: OffsetDateTime) -> Option<String> {
    match system.state {
        SystemState::Active => {}
        SystemState::Suspended => {
            let why = system.suspended_reason.as_deref().unwrap_or("by an operator");
            return Some(format!("system {} is suspended ({why})", system.id));
        }
        SystemState::Retired => return Some(format!("system {} is retired", system.id)),
    }
    if let Some(end) = system.pilot_ends_at
        && end <= now
    {
        return Some(format!(
            "system {}'s pilot ended at {}; an operator must promote or reinstate it",
            system.id,
            super::rfc3339(end)
        ));
    }
    for owner in owners {
        if let Some(why) = owner.lapse_reason(now) {
            return Some(format!("system {} has no accountable owner: {why}", system.id));
        }
    }
    None
}

pub fn decide(ctx: &GrantContext, ask: &Ask, now: OffsetDateTime, limits: TtlPolicy) -> Result<Decision, Denial> {
    let grant = &ctx.grant;
    if let Some(why) = operating_refusal(&ctx.system, [&ctx.business_owner, &ctx.technical_owner], now) {
        return Err(Denial::new(DenyCode::AccessDenied, why));
    }

    let kind = ask.kind.clone().unwrap_or(CredentialKind::Jwt);
    if !grant.kinds.contains(&kind) {
        return Err(Denial::new(
            DenyCode::UnauthorizedClient,
            format!("grant {} does not allow credential kind {}", grant.id, kind),
        ));
    }

    let audiences = if ask.targets.is_empty() {
        match grant.audiences.as_slice() {
            [only] => vec![only.clone()],
            many => {
                let list = many.iter().map(Audience::as_str).collect::<Vec<_>>().join(", ");
                return Err(Denial::new(
                    DenyCode::InvalidTarget,
                    format!("audience is required: grant {} allows {list}", grant.id),
                ));
            }
        }
    } else {
        let outside: Vec<&str> =
            ask.targets.iter().filter(|t| !grant.audiences.contains(t)).map(Audience::as_str).collect();
        if !outside.is_empty() {
            return Err(Denial::new(
                DenyCode::InvalidTarget,
                format!("audience {} is not allowed by grant {}", outside.join(", "), grant.id),
            ));
        }
        if ask.targets.len() > usize::try_from(grant.max_audiences).unwrap_or(usize::MAX) {
            return Err(Denial::new(
                DenyCode::InvalidTarget,
                format!(
                    "{} targets were asked for; grant {} allows at most {} in one token (max_audiences)",
                    ask.targets.len(),
                    grant.id,
                    grant.max_audiences
                ),
            ));
        }
        ask.targets.clone()
    };

    let scopes = match &ask.scopes {
        Some(asked) => {
            let outside: Vec<&str> = asked.outside(&grant.scopes).map(|s| s.as_str()).collect();
            if !outside.is_empty() {
                return Err(Denial::new(
                    DenyCode::InvalidScope,
                    format!("scope {} is not allowed by grant {}", outside.join(" "), grant.id),
                ));
            }
            asked.clone()
        }
        None => grant.default_scopes.clone(),
    };

    let max = grant.max_ttl.min(limits.ceiling);
    let ttl = match ask.requested_ttl {
        Some(asked) if asked > max => {
            return Err(Denial::new(
                DenyCode::InvalidRequest,
                format!(
                    "requested_ttl {}s exceeds the maximum of {}s allowed for grant {}",
                    asked.as_secs(),
                    max.as_secs(),
                    grant.id
                ),
            ));
        }
        Some(asked) => asked,
        None => limits.default_ttl.min(max),
    };

    let mut exp = now + ttl;
    if let Some(end) = ctx.system.pilot_ends_at {
        exp = exp.min(end);
    }
    Ok(Decision { audiences, scopes, kind, iat: now, exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::*;
    use crate::domain::values::*;
    use time::macros::datetime;

    fn owner(id: &str, until: OffsetDateTime) -> Owner {
        Owner {
            id: OwnerId::parse(id).unwrap(),
            display_name: id.into(),
            email: format!("{id}@example.com"),
            status: OwnerStatus::Active,
            attested_until: until,
        }
    }

    fn ctx(now: OffsetDateTime) -> GrantContext {
        GrantContext {
            grant: Grant {
                id: GrantId::parse("g1").unwrap(),
                system: SystemId::parse("s1").unwrap(),
                issuer: "dev".into(),
                subject: SubjectMatch::parse("spiffe://td/a").unwrap(),
                audiences: vec![Audience::parse("reports").unwrap()],
                scopes: ScopeSet::parse_space_separated("read write").unwrap(),
                default_scopes: ScopeSet::parse_space_separated("read").unwrap(),
                kinds: vec![CredentialKind::Jwt],
                max_ttl: Duration::from_secs(900),
                binding: crate::domain::model::Binding::Optional,
                max_audiences: 1,
                on_behalf_of: Vec::new(),
                approval: None,
            },
            system: System {
                id: SystemId::parse("s1").unwrap(),
                name: "S".into(),
                purpose: "p".into(),
                business_owner: OwnerId::parse("b").unwrap(),
                technical_owner: OwnerId::parse("t").unwrap(),
                tier: Tier::Pilot,
                state: SystemState::Active,
                pilot_ends_at: Some(now + Duration::from_secs(86400)),
                data_classification: None,
                suspended_reason: None,
                tier_started_at: now,
            },
            business_owner: owner("b", now + Duration::from_secs(86400 * 30)),
            technical_owner: owner("t", now + Duration::from_secs(86400 * 30)),
            grant_version: 0,
        }
    }

    const LIMITS: TtlPolicy = TtlPolicy { default_ttl: Duration::from_secs(300), ceiling: Duration::from_secs(3600) };
    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    #[test]
    fn defaults_apply_when_nothing_is_asked() {
        let d = decide(&ctx(NOW), &Ask::default(), NOW, LIMITS).unwrap();
        assert_eq!(d.audiences, [Audience::parse("reports").unwrap()]);
        assert_eq!(d.scopes.joined(), "read");
        assert_eq!(d.exp - d.iat, time::Duration::seconds(300));
    }

    #[test]
    fn asking_for_more_is_an_error_not_a_clamp() {
        let c = ctx(NOW);
        let ask = Ask { scopes: Some(ScopeSet::parse_space_separated("read admin").unwrap()), ..Ask::default() };
        assert_eq!(decide(&c, &ask, NOW, LIMITS).unwrap_err().code, DenyCode::InvalidScope);
        let ask = Ask { targets: vec![Audience::parse("billing").unwrap()], ..Ask::default() };
        assert_eq!(decide(&c, &ask, NOW, LIMITS).unwrap_err().code, DenyCode::InvalidTarget);
        let ask = Ask { requested_ttl: Some(Duration::from_secs(901)), ..Ask::default() };
        let denial = decide(&c, &ask, NOW, LIMITS).unwrap_err();
        assert_eq!(denial.code, DenyCode::InvalidRequest);
        assert!(denial.description.contains("900"), "{}", denial.description);
    }

    /// Several targets only when the grant says so (`max_audiences`), and
    /// each one within the grant.
    #[test]
    fn several_targets_need_a_grant_that_allows_them() {
        let mut c = ctx(NOW);
        let target = |a: &str| Audience::parse(a).unwrap();
        c.grant.audiences = vec![target("reports"), target("https://tools.example/mcp")];
        let both = Ask { targets: vec![target("reports"), target("https://tools.example/mcp")], ..Ask::default() };
        let denial = decide(&c, &both, NOW, LIMITS).unwrap_err();
        assert_eq!(denial.code, DenyCode::InvalidTarget);
        assert!(denial.description.contains("max_audiences"), "{}", denial.description);
        c.grant.max_audiences = 2;
        assert_eq!(decide(&c, &both, NOW, LIMITS).unwrap().audiences, both.targets);
        let outside = Ask { targets: vec![target("reports"), target("https://other.example")], ..Ask::default() };
        let denial = decide(&c, &outside, NOW, LIMITS).unwrap_err();
        assert!(denial.description.contains("https://other.example"), "{}", denial.description);
    }

    #[test]
    fn global_ceiling_caps_the_grant() {
        let mut c = ctx(NOW);
        c.grant.max_ttl = Duration::from_secs(7200);
        let ask = Ask { requested_ttl: Some(Duration::from_secs(3601)), ..Ask::default() };
        assert_eq!(decide(&c, &ask, NOW, LIMITS).unwrap_err().code, DenyCode::InvalidRequest);
    }

    #[test]
    fn expiry_never_passes_the_pilot_end() {
        let mut c = ctx(NOW);
        c.system.pilot_ends_at = Some(NOW + Duration::from_secs(60));
        let d = decide(&c, &Ask::default(), NOW, LIMITS).unwrap();
        assert_eq!(d.exp, NOW + Duration::from_secs(60));
    }

    #[test]
    fn ended_pilot_suspended_system_and_lapsed_owner_are_refused() {
        let mut c = ctx(NOW);
        c.system.pilot_ends_at = Some(NOW);
        let denial = decide(&c, &Ask::default(), NOW, LIMITS).unwrap_err();
        assert_eq!(denial.code, DenyCode::AccessDenied);
        assert!(denial.description.contains("pilot ended"), "{}", denial.description);

        let mut c = ctx(NOW);
        c.system.state = SystemState::Suspended;
        assert_eq!(decide(&c, &Ask::default(), NOW, LIMITS).unwrap_err().code, DenyCode::AccessDenied);

        let mut c = ctx(NOW);
        c.technical_owner.status = OwnerStatus::Departed;
        let denial = decide(&c, &Ask::default(), NOW, LIMITS).unwrap_err();
        assert!(denial.description.contains("departed"), "{}", denial.description);
    }

    #[test]
    fn audience_is_required_when_the_grant_allows_several() {
        let mut c = ctx(NOW);
        c.grant.audiences.push(Audience::parse("billing").unwrap());
        let denial = decide(&c, &Ask::default(), NOW, LIMITS).unwrap_err();
        assert_eq!(denial.code, DenyCode::InvalidTarget);
        assert!(denial.description.contains("billing"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        const UNIVERSE: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
        const AUDIENCES: [&str; 3] = ["x", "y", "z"];

        fn scopes(mask: u8) -> ScopeSet {
            let picked: Vec<String> = UNIVERSE
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| (*s).to_owned())
                .collect();
            ScopeSet::from_list(&picked).unwrap()
        }

        fn state(n: u8) -> SystemState {
            match n % 3 {
                0 => SystemState::Active,
                1 => SystemState::Suspended,
                _ => SystemState::Retired,
            }
        }

        #[derive(Debug, Clone)]
        struct Case {
            grant_scopes: u8,
            default_scopes: u8,
            asked_scopes: Option<u8>,
            grant_audiences: u8,
            /// A bit per audience of `AUDIENCES`.
            asked_audiences: u8,
            max_audiences: u32,
            max_ttl: u64,
            ceiling: u64,
            default_ttl: u64,
            requested_ttl: Option<u64>,
            pilot_end: Option<i64>,
            state: u8,
            owner_attested: i64,
            owner_departed: bool,
        }

        fn cases() -> impl Strategy<Value = Case> {
            (
                (0u8..64, 0u8..64, proptest::option::of(0u8..64), 1u8..8, 0u8..8, 1u32..4),
                (1u64..7200, 1u64..86_400, 1u64..3600, proptest::option::of(1u64..10_000)),
                (proptest::option::of(-100i64..100_000), 0u8..3, -10i64..1_000_000, proptest::bool::weighted(0.1)),
            )
                .prop_map(
                    |((gs, ds, asked, ga, aa, ma), (max, ceiling, default, ttl), (end, st, attested, departed))| Case {
                        grant_scopes: gs,
                        default_scopes: ds & gs,
                        asked_scopes: asked,
                        grant_audiences: ga,
                        asked_audiences: aa,
                        max_audiences: ma,
                        max_ttl: max,
                        ceiling,
                        default_ttl: default,
                        requested_ttl: ttl,
                        pilot_end: end,
                        state: st,
                        owner_attested: attested,
                        owner_departed: departed,
                    },
                )
        }

        proptest! {
            /// Whatever the grant and the request, what is issued is within
            /// both, ends by the pilot's end and the lifetime limits, and
            /// nothing is issued to a system that may not operate.
            #[test]
            fn issued_credentials_stay_within_grant_request_and_lifecycle(case in cases()) {
                let mut c = ctx(NOW);
                c.grant.scopes = scopes(case.grant_scopes);
                c.grant.default_scopes = scopes(case.default_scopes);
                c.grant.audiences = AUDIENCES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| case.grant_audiences & (1 << i) != 0)
                    .map(|(_, a)| Audience::parse(a).unwrap())
                    .collect();
                c.grant.max_ttl = Duration::from_secs(case.max_ttl);
                c.grant.max_audiences = case.max_audiences;
                c.system.state = state(case.state);
                c.system.pilot_ends_at = case.pilot_end.map(|s| NOW + time::Duration::seconds(s));
                c.technical_owner.attested_until = NOW + time::Duration::seconds(case.owner_attested);
                if case.owner_departed {
                    c.business_owner.status = OwnerStatus::Departed;
                }
                let limits = TtlPolicy {
                    default_ttl: Duration::from_secs(case.default_ttl),
                    ceiling: Duration::from_secs(case.ceiling),
                };
                let ask = Ask {
                    targets: AUDIENCES
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| case.asked_audiences & (1 << i) != 0)
                        .map(|(_, a)| Audience::parse(a).unwrap())
                        .collect(),
                    scopes: case.asked_scopes.map(scopes),
                    requested_ttl: case.requested_ttl.map(Duration::from_secs),
                    kind: None,
                };
                let may_operate = c.system.state == SystemState::Active
                    && case.pilot_end.is_none_or(|s| s > 0)
                    && case.owner_attested > 0
                    && !case.owner_departed;
                match decide(&c, &ask, NOW, limits) {
                    Ok(d) => {
                        prop_assert!(may_operate, "issued to a system that may not operate: {case:?}");
                        prop_assert_eq!(d.scopes.outside(&c.grant.scopes).count(), 0);
                        if let Some(asked) = &ask.scopes {
                            prop_assert_eq!(d.scopes.outside(asked).count(), 0);
                        }
                        prop_assert!(d.audiences.iter().all(|a| c.grant.audiences.contains(a)));
                        prop_assert!(!d.audiences.is_empty());
                        prop_assert!(d.audiences.len() <= case.max_audiences as usize);
                        if !ask.targets.is_empty() {
                            prop_assert_eq!(&d.audiences, &ask.targets);
                        }
                        let ttl_cap = case.max_ttl.min(case.ceiling);
                        prop_assert!(d.exp <= NOW + Duration::from_secs(ttl_cap));
                        if let Some(asked) = case.requested_ttl {
                            prop_assert!(d.exp <= NOW + Duration::from_secs(asked));
                        }
                        if let Some(end) = c.system.pilot_ends_at {
                            prop_assert!(d.exp <= end);
                        }
                        prop_assert!(d.exp > NOW && d.iat == NOW);
                    }
                    Err(denial) => {
                        if !may_operate {
                            prop_assert_eq!(denial.code, DenyCode::AccessDenied);
                        } else {
                            prop_assert_ne!(denial.code, DenyCode::AccessDenied);
                        }
                    }
                }
            }
        }
    }
}

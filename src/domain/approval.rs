//! Approvals for sensitive access (just-in-time access): a grant that needs
//! a person's approval makes an exchange wait as an access request until a
//! person who may decide approves it for a while, denies it, or it lapses.
//! Pure rules: who may decide, what an approval allows, what a request is.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::identity;
use super::lifecycle::SystemView;
use super::model::Role;

/// How long an approval lasts at most unless the grant says otherwise.
pub const DEFAULT_MAX_APPROVAL: Duration = Duration::from_secs(3600);
/// The longest approval any grant may allow.
pub const MAX_APPROVAL: Duration = Duration::from_secs(7 * 86400);

/// A grant's approval rule: present, every exchange under the grant needs
/// an approved access request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRule {
    /// Who may approve: group names or email addresses; empty, anyone
    /// holding the `approver` role.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// The longest approval a decider may give.
    #[serde(with = "secs")]
    pub max_duration: Duration,
    /// Whether an owner of the system may approve.
    #[serde(default)]
    pub allow_owner_approval: bool,
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_secs)
    }
}

/// Where an access request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessState {
    /// Waiting for a person's decision.
    Pending,
    /// Approved until `approved_until`.
    Approved,
    Denied,
    /// Nobody decided in time.
    Expired,
    /// An approval taken back (by a person, or because its system stopped).
    Revoked,
}

impl AccessState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied, Self::Expired, Self::Revoked]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for AccessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One access request: what a workload asked for under a grant that needs
/// approval, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRequest {
    pub id: String,
    /// Names what was asked ([`request_key`]): asking again finds it.
    #[serde(skip)]
    pub request_key: String,
    pub system_id: String,
    pub grant_id: String,
    /// The workload: its issuer's name and its subject.
    pub issuer: String,
    pub subject: String,
    /// On whose behalf, for a delegated exchange: `issuer subject`.
    pub on_behalf_of: Option<String>,
    /// Audiences, scopes and kind asked for.
    pub asked: serde_json::Value,
    pub state: AccessState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// A pending request lapses then.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// The deciding person, as audit events name actors.
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub approved_until: Option<OffsetDateTime>,
    pub break_glass: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub reviewed_at: Option<OffsetDateTime>,
    pub reviewed_by: Option<String>,
}

impl AccessRequest {
    /// Whether credentials may be issued under it at `now`.
    pub fn allows(&self, now: OffsetDateTime) -> bool {
        self.state == AccessState::Approved && self.approved_until.is_some_and(|until| until > now)
    }

    /// Whether it still waits for a decision at `now`.
    pub fn waiting(&self, now: OffsetDateTime) -> bool {
        self.state == AccessState::Pending && self.expires_at > now
    }
}

/// The key that makes repeated asks one request: the same workload, under
/// the same grant, on the same person's behalf, for the same targets,
/// scopes and kind. The order of targets and scopes does not matter.
pub fn request_key(
    grant_id: &str,
    issuer: &str,
    subject: &str,
    on_behalf_of: Option<&str>,
    audiences: &[String],
    scopes: &[String],
    kind: &str,
) -> String {
    let mut audiences = audiences.to_vec();
    audiences.sort();
    let mut scopes = scopes.to_vec();
    scopes.sort();
    let text = serde_json::json!([grant_id, issuer, subject, on_behalf_of, audiences, scopes, kind]).to_string();
    crate::crypto::hex(&crate::crypto::sha256(text.as_bytes()))
}

/// A person deciding an access request, as their identity provider vouched
/// for them at sign-in; `None` person: an automation token.
pub struct Decider<'a> {
    pub person: Option<DeciderPerson<'a>>,
    pub roles: &'a [Role],
}

pub struct DeciderPerson<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub groups: &'a [String],
    /// The owners linked to this person.
    pub owns: &'a [String],
}

/// How a decider approves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
    /// Take back an approval given earlier.
    Revoke,
}

/// Whether `decider` may take `decision` on `request` under `rule` for the
/// system in `view`. Approving and denying need a person (never an
/// automation token, never the workload) with the `approver` role (or
/// `admin`), who is one of the grant's approvers if it names any, who is
/// not an owner of the system (unless the grant allows owners), and who is
/// not the person the workload acts for. With `break_glass`, an operator or
/// admin who fails only the last three may approve; it is recorded and
/// awaits a second person's review.
pub fn may_decide(
    decider: &Decider<'_>,
    rule: &ApprovalRule,
    view: &SystemView,
    request: &AccessRequest,
    decision: Decision,
    break_glass: bool,
) -> Result<(), String> {
    let Some(person) = &decider.person else {
        return Err("an automation token cannot decide access requests: sign in as a person (halflife login)".into());
    };
    let has = |role: Role| decider.roles.contains(&role);
    if decision == Decision::Revoke {
        // Taking access back is always allowed to those who could give it,
        // and to operators (who can revoke the credentials anyway).
        return if has(Role::Approver) || has(Role::Admin) || has(Role::Operator) {
            Ok(())
        } else {
            Err("revoking an approval needs the approver, operator or admin role".into())
        };
    }
    if break_glass {
        if decision != Decision::Approve {
            return Err("break_glass is for approving; deny without it".into());
        }
        return if has(Role::Operator) || has(Role::Admin) {
            Ok(())
        } else {
            Err("break glass needs the operator or admin role".into())
        };
    }
    if !(has(Role::Approver) || has(Role::Admin)) {
        return Err("deciding access requests needs the approver role".into());
    }
    if !rule.approvers.is_empty() {
        let named = rule
            .approvers
            .iter()
            .any(|a| person.groups.iter().any(|g| g == a) || person.email.is_some_and(|e| identity::same_email(e, a)));
        if !named {
            return Err(format!("this grant's approvers are {}", rule.approvers.join(", ")));
        }
    }
    if !rule.allow_owner_approval {
        for owner in [&view.business_owner, &view.technical_owner] {
            let owns = person.owns.iter().any(|id| id == owner.id.as_str())
                || identity::same(person.subject, owner.id.as_str())
                || person.email.is_some_and(|e| identity::same_email(e, &owner.email));
            if owns {
                return Err(format!(
                    "{} owns system {} and may not decide its access (the grant does not allow owner approval); \
                     in an emergency an operator may approve with break_glass and a reason",
                    identity::visible(person.email.unwrap_or(person.subject)),
                    view.system.id
                ));
            }
        }
    }
    if let Some(principal) = &request.on_behalf_of
        && principal.split_once(' ').is_some_and(|(_, subject)| identity::same(subject, person.subject))
    {
        return Err("the person the workload acts for may not decide its access".into());
    }
    Ok(())
}

/// How long an approval lasts: the decider's `asked` duration (default
/// the rule's maximum), never more than the rule allows.
pub fn approval_duration(rule: &ApprovalRule, asked: Option<Duration>) -> Result<Duration, String> {
    match asked {
        None => Ok(rule.max_duration),
        Some(d) if d.is_zero() => Err("an approval lasts at least 1s".into()),
        Some(d) if d > rule.max_duration => Err(format!(
            "at most {} (the grant's approval_max_duration)",
            humantime::format_duration(rule.max_duration)
        )),
        Some(d) => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Owner, OwnerStatus, System, SystemState, Tier};
    use crate::domain::values::{OwnerId, SystemId};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

    fn owner(id: &str) -> Owner {
        Owner {
            id: OwnerId::parse(id).unwrap(),
            display_name: id.into(),
            email: format!("{id}@example.com"),
            status: OwnerStatus::Active,
            attested_until: NOW + time::Duration::days(30),
        }
    }

    fn view() -> SystemView {
        SystemView {
            system: System {
                id: SystemId::parse("s").unwrap(),
                name: "S".into(),
                purpose: "p".into(),
                business_owner: OwnerId::parse("biz").unwrap(),
                technical_owner: OwnerId::parse("tech").unwrap(),
                tier: Tier::Production,
                state: SystemState::Active,
                pilot_ends_at: None,
                data_classification: Some("restricted".into()),
                suspended_reason: None,
                tier_started_at: NOW,
            },
            business_owner: owner("biz"),
            technical_owner: owner("tech"),
            grants: 1,
        }
    }

    fn request(on_behalf_of: Option<&str>) -> AccessRequest {
        AccessRequest {
            id: "r".into(),
            request_key: "k".into(),
            system_id: "s".into(),
            grant_id: "g".into(),
            issuer: "k8s".into(),
            subject: "agent".into(),
            on_behalf_of: on_behalf_of.map(str::to_owned),
            asked: serde_json::json!({}),
            state: AccessState::Pending,
            created_at: NOW,
            expires_at: NOW + time::Duration::minutes(15),
            decided_at: None,
            decided_by: None,
            reason: None,
            approved_until: None,
            break_glass: false,
            reviewed_at: None,
            reviewed_by: None,
        }
    }

    fn rule() -> ApprovalRule {
        ApprovalRule { approvers: vec![], max_duration: DEFAULT_MAX_APPROVAL, allow_owner_approval: false }
    }

    fn decide(email: &str, roles: &[Role], groups: &[&str], rule: &ApprovalRule, glass: bool) -> Result<(), String> {
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        let person =
            DeciderPerson { issuer: "https://idp", subject: "sub-1", email: Some(email), groups: &groups, owns: &[] };
        let decider = Decider { person: Some(person), roles };
        may_decide(&decider, rule, &view(), &request(None), Decision::Approve, glass)
    }

    #[test]
    fn an_approver_who_owns_nothing_decides() {
        assert_eq!(decide("ann@corp.example", &[Role::Approver], &[], &rule(), false), Ok(()));
    }

    #[test]
    fn owners_tokens_and_other_roles_do_not_decide() {
        assert!(decide("tech@example.com", &[Role::Approver], &[], &rule(), false).unwrap_err().contains("owns"));
        assert!(decide("TECH+x@Example.com", &[Role::Approver], &[], &rule(), false).is_err(), "by another spelling");
        let allowed = ApprovalRule { allow_owner_approval: true, ..rule() };
        assert_eq!(decide("tech@example.com", &[Role::Approver], &[], &allowed, false), Ok(()));
        assert!(decide("op@corp.example", &[Role::Operator], &[], &rule(), false).unwrap_err().contains("approver"));
        let token = Decider { person: None, roles: &[Role::Admin] };
        let refused = may_decide(&token, &rule(), &view(), &request(None), Decision::Approve, true);
        assert!(refused.unwrap_err().contains("automation token"));
    }

    #[test]
    fn named_approvers_are_groups_or_addresses() {
        let named = ApprovalRule { approvers: vec!["risk".into(), "zoe@corp.example".into()], ..rule() };
        assert!(decide("ann@corp.example", &[Role::Approver], &["staff"], &named, false).is_err());
        assert_eq!(decide("ann@corp.example", &[Role::Approver], &["risk"], &named, false), Ok(()));
        assert_eq!(decide("Zoe@Corp.example", &[Role::Approver], &[], &named, false), Ok(()));
    }

    #[test]
    fn break_glass_lets_an_operator_owner_approve_and_nothing_else() {
        assert_eq!(decide("tech@example.com", &[Role::Operator], &[], &rule(), true), Ok(()));
        assert!(decide("tech@example.com", &[Role::Auditor], &[], &rule(), true).is_err());
    }

    #[test]
    fn the_person_acted_for_does_not_decide() {
        let groups = Vec::new();
        let person = DeciderPerson { issuer: "https://idp", subject: "sub-1", email: None, groups: &groups, owns: &[] };
        let decider = Decider { person: Some(person), roles: &[Role::Approver] };
        let refused =
            may_decide(&decider, &rule(), &view(), &request(Some("corp-idp sub-1")), Decision::Approve, false);
        assert!(refused.unwrap_err().contains("acts for"));
    }

    #[test]
    fn durations_stay_within_the_rule() {
        assert_eq!(approval_duration(&rule(), None), Ok(DEFAULT_MAX_APPROVAL));
        assert_eq!(approval_duration(&rule(), Some(Duration::from_secs(600))), Ok(Duration::from_secs(600)));
        assert!(approval_duration(&rule(), Some(Duration::from_secs(7200))).is_err());
    }

    #[test]
    fn the_same_ask_in_another_order_is_the_same_request() {
        let a = request_key("g", "k8s", "agent", None, &["b".into(), "a".into()], &["x".into(), "y".into()], "jwt");
        let b = request_key("g", "k8s", "agent", None, &["a".into(), "b".into()], &["y".into(), "x".into()], "jwt");
        assert_eq!(a, b);
        assert_ne!(a, request_key("g", "k8s", "agent", None, &["a".into()], &["x".into(), "y".into()], "jwt"));
    }
}

//! Delegation (RFC 8693 §2.1, §4.1, §4.4): a workload (the actor) gets a
//! token on behalf of someone else (the subject: a person, or the workload
//! that passed its token on). The grant is matched on the actor; the
//! grant's `on_behalf_of` entries say whom it may act for. Pure rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::Grant;
use super::values::{InvalidValue, SubjectMatch};

/// The issuer name that stands for halflife's own access tokens in
/// `on_behalf_of` (a chain: an agent passes a token it received to a
/// sub-agent).
pub const HALFLIFE_ISSUER: &str = "halflife";

/// Which subjects an `on_behalf_of` entry covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectPattern {
    /// `*`: any subject of the issuer.
    Any,
    Match(SubjectMatch),
}

impl SubjectPattern {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s == "*" { Ok(Self::Any) } else { SubjectMatch::parse(s).map(Self::Match) }
    }

    pub fn matches(&self, subject: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Match(m) => m.matches(subject),
        }
    }
}

impl Serialize for SubjectPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => s.serialize_str("*"),
            Self::Match(m) => m.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SubjectPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One entry of a grant's `on_behalf_of`: the actor may act for subjects of
/// `issuer` that match one of `subjects` and carry every claim of `claims`
/// (a string claim equal to the value, or a list of strings holding it:
/// `groups = "support"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnBehalfOf {
    pub issuer: String,
    pub subjects: Vec<SubjectPattern>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

impl OnBehalfOf {
    fn covers(&self, subject: &Principal) -> bool {
        self.issuer == subject.issuer
            && self.subjects.iter().any(|p| p.matches(&subject.subject))
            && self.claims.iter().all(|(name, wanted)| claim_holds(subject.claims.get(name), wanted))
    }
}

fn claim_holds(value: Option<&Value>, wanted: &str) -> bool {
    match value {
        Some(Value::String(s)) => s == wanted,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(wanted)),
        _ => false,
    }
}

/// An identity in a delegation: its configured issuer name, its `iss` and
/// its subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub issuer: String,
    pub iss: String,
    pub sub: String,
}

/// On whose behalf a token will act, as its subject token says.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The configured issuer name of the subject token (`halflife` for one
    /// of halflife's own access tokens).
    pub issuer: String,
    pub iss: String,
    pub subject: String,
    /// The subject token's claims, for `claims` matches and `may_act`.
    pub claims: Map<String, Value>,
    /// A halflife access token's `act`: the chain so far.
    pub act: Option<Value>,
    /// Who the chain started from, for revocation: the original subject
    /// (a person, or the first workload) by issuer name and subject.
    pub origin: (String, String),
}

/// Why a delegation is refused: said to the caller (`access_denied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAllowed(pub String);

/// How many actors a chain `act` holds (the outermost first).
pub fn depth(act: Option<&Value>) -> usize {
    let mut n = 0;
    let mut next = act;
    while let Some(Value::Object(map)) = next {
        n += 1;
        next = map.get("act");
    }
    n
}

/// Decides whether `actor` may act for `subject` under `grant`, and builds
/// the issued token's `act` claim (RFC 8693 §4.1): the actor, with the
/// subject token's own `act` (a chain) nested inside it.
pub fn delegate(grant: &Grant, subject: &Principal, actor: &Identity, max_depth: usize) -> Result<Value, NotAllowed> {
    if grant.on_behalf_of.is_empty() {
        return Err(NotAllowed(format!("grant {} allows no delegation (it has no on_behalf_of)", grant.id)));
    }
    if !grant.on_behalf_of.iter().any(|entry| entry.covers(subject)) {
        return Err(NotAllowed(format!(
            "grant {} does not allow {} to act for {} of issuer {}",
            grant.id, actor.sub, subject.subject, subject.issuer
        )));
    }
    // RFC 8693 §4.4: a subject token that says who may act for it is obeyed.
    if let Some(may_act) = subject.claims.get("may_act") {
        let named = |key: &str| may_act.get(key).and_then(Value::as_str);
        let allowed = may_act.is_object()
            && named("sub").is_some_and(|sub| sub == actor.sub)
            && named("iss").is_none_or(|iss| iss == actor.iss);
        if !allowed {
            return Err(NotAllowed(format!("the subject token's may_act does not name {} as its actor", actor.sub)));
        }
    }
    let depth = depth(subject.act.as_ref()) + 1;
    if depth > max_depth {
        return Err(NotAllowed(format!(
            "the delegation chain would be {depth} actors deep; tokens.max_delegation_depth is {max_depth}"
        )));
    }
    let mut act = serde_json::json!({"sub": actor.sub, "iss": actor.iss});
    if let (Some(previous), Value::Object(map)) = (&subject.act, &mut act) {
        map.insert("act".into(), previous.clone());
    }
    Ok(act)
}

/// The chain an `act` claim describes, outermost actor first, as the audit
/// trail records it.
pub fn chain(act: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = Some(act);
    while let Some(Value::Object(map)) = next {
        let mut link = map.clone();
        link.remove("act");
        out.push(Value::Object(link));
        next = map.get("act");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::domain::model::Binding;
    use crate::domain::values::{Audience, CredentialKind, GrantId, ScopeSet, SystemId};

    fn grant(on_behalf_of: Vec<OnBehalfOf>) -> Grant {
        Grant {
            id: GrantId::parse("agent").unwrap(),
            system: SystemId::parse("support").unwrap(),
            issuer: "k8s".into(),
            subject: SubjectMatch::parse("sa:agent").unwrap(),
            audiences: vec![Audience::parse("tickets").unwrap()],
            scopes: ScopeSet::default(),
            default_scopes: ScopeSet::default(),
            kinds: vec![CredentialKind::Jwt],
            max_ttl: Duration::from_secs(600),
            binding: Binding::Optional,
            max_audiences: 1,
            on_behalf_of,
            approval: None,
        }
    }

    fn person(sub: &str, claims: Value) -> Principal {
        Principal {
            issuer: "corp-idp".into(),
            iss: "https://idp.example".into(),
            subject: sub.into(),
            claims: claims.as_object().cloned().unwrap_or_default(),
            act: None,
            origin: ("corp-idp".into(), sub.into()),
        }
    }

    fn agent() -> Identity {
        Identity { issuer: "k8s".into(), iss: "https://k8s.example".into(), sub: "sa:agent".into() }
    }

    fn support_staff() -> OnBehalfOf {
        OnBehalfOf {
            issuer: "corp-idp".into(),
            subjects: vec![SubjectPattern::Any],
            claims: BTreeMap::from([("groups".into(), "support".into())]),
        }
    }

    #[test]
    fn an_actor_acts_only_for_whom_its_grant_names() {
        let g = grant(vec![support_staff()]);
        let act = delegate(&g, &person("ana", json!({"groups": ["support", "x"]})), &agent(), 4).unwrap();
        assert_eq!(act, json!({"sub": "sa:agent", "iss": "https://k8s.example"}));
        assert!(delegate(&g, &person("bob", json!({"groups": ["sales"]})), &agent(), 4).is_err());
        assert!(delegate(&g, &person("bob", json!({})), &agent(), 4).is_err());
        let mut other = person("ana", json!({"groups": "support"}));
        other.issuer = "other-idp".into();
        assert!(delegate(&g, &other, &agent(), 4).is_err());
        assert!(
            delegate(&grant(vec![]), &person("ana", json!({})), &agent(), 4).unwrap_err().0.contains("no delegation")
        );
    }

    #[test]
    fn may_act_is_obeyed_and_chains_nest_up_to_the_limit() {
        let g = grant(vec![OnBehalfOf {
            issuer: "corp-idp".into(),
            subjects: vec![SubjectPattern::parse("ana").unwrap()],
            claims: BTreeMap::new(),
        }]);
        let named = person("ana", json!({"may_act": {"sub": "sa:agent"}}));
        assert!(delegate(&g, &named, &agent(), 4).is_ok());
        let elsewhere = person("ana", json!({"may_act": {"sub": "sa:other"}}));
        assert!(delegate(&g, &elsewhere, &agent(), 4).unwrap_err().0.contains("may_act"));
        let wrong_iss = person("ana", json!({"may_act": {"sub": "sa:agent", "iss": "https://evil.example"}}));
        assert!(delegate(&g, &wrong_iss, &agent(), 4).is_err());

        let mut chained = person("ana", json!({}));
        chained.act = Some(json!({"sub": "sa:first", "iss": "https://k8s.example"}));
        let act = delegate(&g, &chained, &agent(), 4).unwrap();
        assert_eq!(act["act"]["sub"], "sa:first");
        assert_eq!(depth(Some(&act)), 2);
        assert_eq!(chain(&act).len(), 2);
        assert!(delegate(&g, &chained, &agent(), 1).unwrap_err().0.contains("max_delegation_depth"));
    }
}

//! The audit trail's tamper evidence: the hash chain, signed checkpoints,
//! and verification — of the live database or of an exported file.
//!
//! Each event's `hash` is `SHA-256(prev_hash ‖ "\n" ‖ canonical JSON)`, where
//! `prev_hash` is the previous event's hash in lower-case hex (64 zeros for
//! the first event) and the canonical JSON is the event's fields in the
//! order of [`Canonical`], compact, with object keys sorted. Altering,
//! deleting or reordering any event breaks every later link. A signed
//! checkpoint (sequence, head hash, time) lets an auditor who kept it detect
//! a truncated tail too.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::crypto;

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The `typ` header of checkpoint signatures.
pub const CHECKPOINT_TYP: &str = "hl-checkpoint+jwt";

/// Where a request came from, for attribution.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub source: Option<String>,
}

/// How the act an event records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "success" => Ok(Self::Success),
            "denied" => Ok(Self::Denied),
            "failure" => Ok(Self::Failure),
            other => Err(format!("unknown outcome {other:?}")),
        }
    }
}

/// One entry of the audit trail: what happened, to what, for whom. Holds
/// identifiers and fingerprints only: never a token, secret or key. Stored
/// and exported as an [`AuditRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// RFC 3339, to the millisecond once stored.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub kind: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub system_id: Option<String>,
    /// The system's owners at that moment, space-separated.
    pub owners: Option<String>,
    pub grant_id: Option<String>,
    pub jti: Option<String>,
    pub request_id: Option<String>,
    pub source: Option<String>,
    pub attestation_issuer: Option<String>,
    pub subject: Option<String>,
    pub attestation_id: Option<String>,
    pub audience: Option<String>,
    pub scopes: Option<String>,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub detail: Option<Value>,
}

impl AuditEvent {
    pub fn new(kind: &str, outcome: Outcome, time: OffsetDateTime, meta: &RequestMeta) -> Self {
        Self {
            time,
            kind: kind.to_owned(),
            outcome,
            reason: None,
            actor: None,
            system_id: None,
            owners: None,
            grant_id: None,
            jti: None,
            request_id: meta.request_id.clone(),
            source: meta.source.clone(),
            attestation_issuer: None,
            subject: None,
            attestation_id: None,
            audience: None,
            scopes: None,
            iat: None,
            exp: None,
            detail: None,
        }
    }
}

/// One audit event as stored and exported: the event, its place in the
/// chain and its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Milliseconds since the epoch: what the hash covers.
    pub time_ms: i64,
    pub prev_hash: String,
    pub hash: String,
    /// The configured name of the attestation's issuer (as grants, `/v1/revoke`
    /// and `/v1/credentials` name it), beside `issuer_url`. Neither is hashed:
    /// both are read from `attestation_issuer` and the issuers configured
    /// when the event is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The attestation's `iss` (the same as `attestation_issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_url: Option<String>,
}

/// The hashed form of an event: every field but `time` (derived) and the
/// hash itself, in this order.
#[derive(Serialize)]
pub struct Canonical<'a> {
    pub seq: i64,
    pub time_ms: i64,
    pub kind: &'a str,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub system_id: Option<&'a str>,
    pub owners: Option<&'a str>,
    pub grant_id: Option<&'a str>,
    pub jti: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub source: Option<&'a str>,
    pub attestation_issuer: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub attestation_id: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub scopes: Option<&'a str>,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub detail: Option<&'a Value>,
}

/// The moment of a millisecond timestamp.
pub fn time_of(time_ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ms) * 1_000_000).ok()
}

/// RFC 3339 text of a millisecond timestamp, as events show it.
pub fn rfc3339_ms(time_ms: i64) -> Option<String> {
    time_of(time_ms).and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
}

/// The chain hash of `event` after `prev_hash`, in lower-case hex.
pub fn chain_hash(prev_hash: &str, event: &Canonical<'_>) -> String {
    crypto::hex(&chain_digest(prev_hash, event))
}

/// The chain hash of `event` after `prev_hash`: its 32 bytes, as stored.
pub fn chain_digest(prev_hash: &str, event: &Canonical<'_>) -> [u8; 32] {
    // Written once into a buffer that holds an issuance's event whole.
    let mut input = Vec::with_capacity(2048);
    input.extend_from_slice(prev_hash.as_bytes());
    input.push(b'\n');
    if serde_json::to_writer(&mut input, event).is_err() {
        input.truncate(prev_hash.len() + 1);
    }
    crypto::sha256(&input)
}

impl AuditRecord {
    /// `event` sealed as event `seq` after `prev_hash`: its time kept to
    /// the millisecond (what the hash covers), its hash computed.
    pub fn seal(seq: i64, mut event: AuditEvent, prev_hash: String) -> (Self, [u8; 32]) {
        let (time_ms, digest) = event.link(seq, &prev_hash);
        event.time = time_of(time_ms).unwrap_or(event.time);
        let hash = crypto::hex(&digest);
        (Self { seq, event, time_ms, prev_hash, hash, issuer: None, issuer_url: None }, digest)
    }

    /// The event's time as RFC 3339 text, as exports show it.
    pub fn time(&self) -> String {
        rfc3339_ms(self.time_ms).unwrap_or_default()
    }

    pub fn canonical(&self) -> Canonical<'_> {
        self.event.canonical(self.seq, self.time_ms)
    }
}

impl AuditEvent {
    /// Milliseconds since the epoch: the time the chain hash covers.
    pub fn time_ms(&self) -> i64 {
        i64::try_from(self.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// This event as event `seq` after `prev_hash`, without copying it:
    /// its [`time_ms`](Self::time_ms) and its chain hash, the same as
    /// [`AuditRecord::seal`] gives. The writer seals every event it
    /// commits this way.
    pub fn link(&self, seq: i64, prev_hash: &str) -> (i64, [u8; 32]) {
        let time_ms = self.time_ms();
        (time_ms, chain_digest(prev_hash, &self.canonical(seq, time_ms)))
    }

    fn canonical(&self, seq: i64, time_ms: i64) -> Canonical<'_> {
        let e = self;
        Canonical {
            seq,
            time_ms,
            kind: &e.kind,
            outcome: e.outcome.as_str(),
            reason: e.reason.as_deref(),
            actor: e.actor.as_deref(),
            system_id: e.system_id.as_deref(),
            owners: e.owners.as_deref(),
            grant_id: e.grant_id.as_deref(),
            jti: e.jti.as_deref(),
            request_id: e.request_id.as_deref(),
            source: e.source.as_deref(),
            attestation_issuer: e.attestation_issuer.as_deref(),
            subject: e.subject.as_deref(),
            attestation_id: e.attestation_id.as_deref(),
            audience: e.audience.as_deref(),
            scopes: e.scopes.as_deref(),
            iat: e.iat,
            exp: e.exp,
            detail: e.detail.as_ref(),
        }
    }
}

/// A signed statement of the chain's head at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub time: String,
    /// Compact JWS over `{iss, seq, hash, time}`, signed with the broker's
    /// signing key; verify with the JWKS.
    pub signature: String,
}

/// Claims of a checkpoint signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    pub iss: String,
    pub seq: i64,
    pub hash: String,
    pub time: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub events_checked: u64,
    pub checkpoints_checked: u64,
    /// The last sequence number checked.
    pub head_seq: Option<i64>,
    /// The first problem found: its sequence number and what is wrong.
    pub first_problem: Option<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub seq: i64,
    pub what: String,
}

/// Checks events in sequence order, one at a time, in constant memory.
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    /// Hashes at checkpointed sequence numbers, checked as they pass.
    checkpoints: std::collections::BTreeMap<i64, String>,
    report: VerifyReport,
}

impl ChainVerifier {
    /// Starts at `from_seq` whose predecessor has `prev_hash`
    /// ([`GENESIS`] when starting at 1).
    pub fn new(from_seq: i64, prev_hash: String, checkpoints: &[Checkpoint]) -> Self {
        Self {
            expected_seq: from_seq,
            prev_hash,
            checkpoints: checkpoints.iter().map(|c| (c.seq, c.hash.clone())).collect(),
            report: VerifyReport { ok: true, ..VerifyReport::default() },
        }
    }

    fn fail(&mut self, seq: i64, what: String) {
        if self.report.first_problem.is_none() {
            self.report.ok = false;
            self.report.first_problem = Some(Problem { seq, what });
        }
    }

    /// Feeds the next event; returns false once a problem was found.
    pub fn push(&mut self, event: &AuditRecord) -> bool {
        if self.report.first_problem.is_some() {
            return false;
        }
        if event.seq != self.expected_seq {
            let what = if event.seq > self.expected_seq {
                format!("event {} is missing (next present is {})", self.expected_seq, event.seq)
            } else {
                format!("event {} appears out of order after {}", event.seq, self.expected_seq - 1)
            };
            self.fail(self.expected_seq, what);
            return false;
        }
        if event.prev_hash != self.prev_hash {
            self.fail(event.seq, "does not link to the previous event (deleted, reordered or altered)".into());
            return false;
        }
        if chain_hash(&self.prev_hash, &event.canonical()) != event.hash {
            self.fail(event.seq, "content does not match its hash (altered)".into());
            return false;
        }
        // `time` is derived from the hashed `time_ms`; an export whose
        // readable time was edited is altered too.
        if time_of(event.time_ms) != Some(event.event.time) {
            self.fail(event.seq, "time does not match time_ms (altered)".into());
            return false;
        }
        if let Some(expected) = self.checkpoints.get(&event.seq) {
            if *expected != event.hash {
                self.fail(event.seq, "differs from the signed checkpoint at this sequence".into());
                return false;
            }
            self.report.checkpoints_checked += 1;
        }
        self.report.events_checked += 1;
        self.report.head_seq = Some(event.seq);
        self.prev_hash.clone_from(&event.hash);
        self.expected_seq += 1;
        true
    }

    /// Finishes: a checkpoint beyond the last event means the tail was cut.
    pub fn finish(mut self) -> VerifyReport {
        if self.report.first_problem.is_none() {
            let last = self.expected_seq - 1;
            if let Some((&seq, _)) = self.checkpoints.range(last + 1..).next() {
                self.fail(
                    last + 1,
                    format!(
                        "the log ends at {last} but a signed checkpoint covers event {seq}: the tail was truncated"
                    ),
                );
            }
        }
        self.report
    }
}

/// Verifies a checkpoint's signature against a JWKS document; returns its
/// claims when valid and consistent with the checkpoint.
pub fn verify_checkpoint(checkpoint: &Checkpoint, jwks: &Value) -> Result<CheckpointClaims, String> {
    let header = jsonwebtoken::decode_header(&checkpoint.signature).map_err(|e| format!("malformed signature: {e}"))?;
    if header.typ.as_deref() != Some(CHECKPOINT_TYP) {
        return Err("not a checkpoint signature".into());
    }
    let kid = header.kid.ok_or("signature names no key")?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| format!("JWKS: {e}"))?;
    let jwk = set.find(&kid).ok_or_else(|| format!("key {kid} is not in the JWKS"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<CheckpointClaims>(&checkpoint.signature, &key, &validation)
        .map_err(|e| format!("signature does not verify: {e}"))?
        .claims;
    if claims.seq != checkpoint.seq || claims.hash != checkpoint.hash || claims.time != checkpoint.time {
        return Err("the signed claims differ from the checkpoint".into());
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let time = time_of(1000 * seq).unwrap();
                let mut event = AuditEvent::new("credential.issued", Outcome::Success, time, &RequestMeta::default());
                event.actor = Some("a".into());
                event.system_id = Some("s".into());
                event.owners = Some("b t".into());
                event.jti = Some(format!("j{seq}"));
                event.detail = Some(serde_json::json!({"z": 1, "a": [1, 2]}));
                let (r, _) = AuditRecord::seal(seq, event, prev.clone());
                prev.clone_from(&r.hash);
                r
            })
            .collect()
    }

    fn verify(events: &[AuditRecord], checkpoints: &[Checkpoint]) -> VerifyReport {
        let mut v = ChainVerifier::new(1, GENESIS.into(), checkpoints);
        for e in events {
            if !v.push(e) {
                break;
            }
        }
        v.finish()
    }

    fn cp(seq: i64, hash: &str) -> Checkpoint {
        Checkpoint { seq, hash: hash.into(), time: String::new(), signature: String::new() }
    }

    /// A fixed event and its hash: a re-implementation of the canonical
    /// form elsewhere must reproduce this value.
    #[test]
    fn canonical_form_has_a_stable_test_vector() {
        let event = &chain(1)[0];
        let body = serde_json::to_string(&event.canonical()).unwrap();
        assert_eq!(
            body,
            r#"{"seq":1,"time_ms":1000,"kind":"credential.issued","outcome":"success","reason":null,"actor":"a","system_id":"s","owners":"b t","grant_id":null,"jti":"j1","request_id":null,"source":null,"attestation_issuer":null,"subject":null,"attestation_id":null,"audience":null,"scopes":null,"iat":null,"exp":null,"detail":{"a":[1,2],"z":1}}"#
        );
        assert_eq!(event.hash, crypto::hex(&crypto::sha256(format!("{GENESIS}\n{body}").as_bytes())));
        assert_eq!(event.hash, "3ca333896b4619b5fdcc7f9f959e96939b2ede609531bfe0c5e8db23873b2640");
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let events = chain(5);
        let report = verify(&events, &[cp(3, &events[2].hash)]);
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events_checked, 5);
        assert_eq!(report.checkpoints_checked, 1);
    }

    #[test]
    fn each_kind_of_tampering_names_its_sequence() {
        let mut altered = chain(5);
        altered[2].event.actor = Some("mallory".into());
        assert_eq!(verify(&altered, &[]).first_problem.unwrap().seq, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(verify(&deleted, &[]).first_problem.unwrap().seq, 2);

        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert_eq!(verify(&swapped, &[]).first_problem.unwrap().seq, 2);

        let events = chain(5);
        let truncated = &events[..3];
        let report = verify(truncated, &[cp(4, &events[3].hash)]);
        assert_eq!(report.first_problem.unwrap().seq, 4);
        assert!(!report.ok);
    }
}

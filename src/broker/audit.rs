//! Audit use cases: signed checkpoints, verification, a credential's story.

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Broker, Failure, Internal, Unavailable};
use crate::audit::{CHECKPOINT_TYP, ChainVerifier, Checkpoint, CheckpointClaims, GENESIS, VerifyReport};
use crate::store::{AuditFilter, AuditReader};

/// Events fetched per page while verifying or exporting.
pub const PAGE: u32 = 1000;

/// When checkpoints are written.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// After this many new events…
    pub every_events: i64,
    /// …or this long since the last checkpoint, whichever comes first.
    pub every: Duration,
}

/// The checkpoint writer's memory of the last checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointState {
    pub seq: i64,
    pub at: Option<OffsetDateTime>,
}

/// Verifies the chain of the log `audit` reads, from `from` (default 1) to
/// `to` (default the head), and every checkpoint in that range against
/// `jwks`; names the first problem. Works on any database or copy of one
/// (`halflife audit verify --database`).
pub async fn verify_log(
    audit: &dyn AuditReader,
    jwks: &Value,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<VerifyReport, Unavailable> {
    let from = from.unwrap_or(1).max(1);
    let checkpoints = audit.checkpoints().await.map_err(Unavailable)?;
    let relevant: Vec<Checkpoint> =
        checkpoints.into_iter().filter(|c| c.seq >= from && to.is_none_or(|t| c.seq <= t)).collect();
    for c in &relevant {
        if let Err(why) = crate::audit::verify_checkpoint(c, jwks) {
            return Ok(VerifyReport {
                ok: false,
                first_problem: Some(crate::audit::Problem { seq: c.seq, what: format!("checkpoint: {why}") }),
                ..VerifyReport::default()
            });
        }
    }
    let prev = if from == 1 {
        GENESIS.to_owned()
    } else {
        audit.audit_hash(from - 1).await.map_err(Unavailable)?.unwrap_or_default()
    };
    let mut verifier = ChainVerifier::new(from, prev, &relevant);
    let filter = AuditFilter { from_seq: Some(from), to_seq: to, ..AuditFilter::default() };
    let mut after = None;
    loop {
        let page = audit.audit_events(&filter, after, PAGE).await.map_err(Unavailable)?;
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        let full = page.len() == PAGE as usize;
        if !page.iter().all(|e| verifier.push(e)) || !full {
            break;
        }
    }
    Ok(verifier.finish())
}

impl Broker {
    /// The configured issuers by the `iss` their attestations are recorded
    /// under: JWT issuers, the dev issuer, and each SPIFFE trust domain of
    /// the mTLS listener (`spiffe://<trust domain>`).
    pub fn issuers_by_url(&self) -> std::collections::HashMap<String, String> {
        let mut names: std::collections::HashMap<String, String> =
            self.verifier.issuers().map(|i| (i.iss.clone(), i.name.clone())).collect();
        if let Some(bundles) = &self.bundles {
            names.extend(bundles.issuer_names());
        }
        names
    }

    /// Names each event's attestation issuer both ways: `issuer`, the name
    /// grants use, and `issuer_url`, the `iss` recorded.
    pub fn name_issuers(&self, events: &mut [crate::audit::AuditRecord]) {
        if events.iter().all(|e| e.event.attestation_issuer.is_none()) {
            return;
        }
        let names = self.issuers_by_url();
        for e in events {
            e.issuer_url.clone_from(&e.event.attestation_issuer);
            e.issuer = e.event.attestation_issuer.as_ref().and_then(|url| names.get(url).cloned());
        }
    }

    /// The `iss` values an audit filter's `issuer` means: the URL itself, or
    /// the URL of the configured issuer of that name.
    pub fn issuer_filter(&self, issuer: &str) -> String {
        self.issuers_by_url()
            .into_iter()
            .find(|(_, name)| name == issuer)
            .map_or_else(|| issuer.to_owned(), |(url, _)| url)
    }

    /// Signs and stores a checkpoint of the current head, if the head moved.
    pub async fn write_checkpoint(&self, now: OffsetDateTime) -> Result<Option<Checkpoint>, Failure> {
        let Some((seq, hash)) = self.audit.audit_head().await.map_err(Unavailable)? else {
            return Ok(None);
        };
        let claims =
            CheckpointClaims { iss: self.issuer.clone(), seq, hash: hash.clone(), time: crate::domain::rfc3339(now) };
        let signature = self
            .keys
            .get()
            .signing(now)
            .sign_jwt(CHECKPOINT_TYP, &claims)
            .map_err(|e| Internal::new("checkpoint signing", e))?;
        let checkpoint = Checkpoint { seq, hash, time: claims.time, signature };
        self.checkpoints.write_checkpoint(&checkpoint).await.map_err(Unavailable)?;
        Ok(Some(checkpoint))
    }

    /// Writes a checkpoint when `policy` says one is due.
    pub async fn checkpoint_if_due(
        &self,
        state: &mut CheckpointState,
        policy: CheckpointPolicy,
        now: OffsetDateTime,
    ) -> Result<(), Failure> {
        let Some((head, _)) = self.audit.audit_head().await.map_err(Unavailable)? else { return Ok(()) };
        let grown = head - state.seq;
        let stale = state.at.is_none_or(|at| now - at >= policy.every);
        if (grown >= policy.every_events || (grown > 0 && stale))
            && let Some(c) = self.write_checkpoint(now).await?
        {
            state.seq = c.seq;
            state.at = Some(now);
        }
        Ok(())
    }

    /// The last checkpoint written, to resume the writer's state.
    pub async fn last_checkpoint(&self) -> Result<CheckpointState, Unavailable> {
        let all = self.audit.checkpoints().await.map_err(Unavailable)?;
        Ok(all.last().map_or_else(CheckpointState::default, |c| CheckpointState {
            seq: c.seq,
            at: time::OffsetDateTime::parse(&c.time, &time::format_description::well_known::Rfc3339).ok(),
        }))
    }

    /// Verifies the chain from `from` (default 1) to `to` (default the
    /// head) and every checkpoint signature; names the first problem.
    pub async fn verify_audit(&self, from: Option<i64>, to: Option<i64>) -> Result<VerifyReport, Unavailable> {
        // Old checkpoints were signed by keys since retired: every key the
        // broker ever stored checks its own signatures.
        verify_log(self.audit.as_ref(), &self.keys.get().all_jwks(), from, to).await
    }

    /// Everything known about one credential: its row (never the token),
    /// its own events, and later revocations that covered it.
    pub async fn credential_story(&self, jti: &str) -> Result<Option<Value>, Unavailable> {
        let Some(credential) = self.audit.credential_row(jti).await.map_err(Unavailable)? else {
            return Ok(None);
        };
        let own = AuditFilter { jti: Some(jti.to_owned()), ..AuditFilter::default() };
        let events = self.audit.audit_events(&own, None, PAGE).await.map_err(Unavailable)?;
        let issued_at = events.iter().find(|e| e.event.kind == "credential.issued").map_or(0, |e| e.seq);
        let system = credential["system"].as_str().map(str::to_owned);
        let subject = credential["subject"].as_str().map(str::to_owned);
        let principal = credential["on_behalf_of"]["subject"].as_str().map(str::to_owned);
        let revoked = || Some("credential.revoked".to_owned());
        let mut filters = vec![
            AuditFilter { system: system.clone(), kind: revoked(), ..AuditFilter::default() },
            AuditFilter { actor: subject, kind: revoked(), ..AuditFilter::default() },
            AuditFilter { system, kind: Some("system.*".into()), ..AuditFilter::default() },
        ];
        // A delegated credential is revoked with the identity it acts for.
        if principal.is_some() {
            filters.push(AuditFilter { actor: principal, kind: revoked(), ..AuditFilter::default() });
        }
        let mut related = Vec::new();
        for filter in filters {
            let found = self.audit.audit_events(&filter, Some(issued_at), PAGE).await.map_err(Unavailable)?;
            related.extend(found.into_iter().filter(|e| e.event.jti.is_none()));
        }
        related.sort_by_key(|e| e.seq);
        related.dedup_by_key(|e| e.seq);
        let mut events = events;
        self.name_issuers(&mut events);
        self.name_issuers(&mut related);
        let mut credential = credential;
        if let Some(name) = credential["issuer"].as_str()
            && let Some((url, _)) = self.issuers_by_url().into_iter().find(|(_, n)| n == name)
        {
            credential["issuer_url"] = json!(url);
        }
        let grant = match credential["system"].as_str().and_then(|s| crate::domain::values::SystemId::parse(s).ok()) {
            Some(system) => {
                let grants = self.lifecycle.grants(&system).await.map_err(Unavailable)?;
                grants.into_iter().find(|g| credential["grant"] == g.id.as_str())
            }
            None => None,
        };
        Ok(Some(json!({"credential": credential, "grant": grant, "events": events, "related": related})))
    }
}

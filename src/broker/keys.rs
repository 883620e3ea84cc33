//! Signing-key rotation. A rotation stores the next key with an activation
//! time `pre_publish` ahead: every replica publishes it in the JWKS at once
//! (relying parties and replicas fetch it before it signs anything), and it
//! signs from its activation on. The previous key stays published, and its
//! tokens stay valid, until every token it can have signed has expired;
//! then it is retired (withdrawn from the JWKS and refused). The leader
//! rotates on a schedule and retires superseded keys when they are due.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::operator::OpError;
use super::{Broker, Failure, Internal, Unavailable};
use crate::config::{KeysConfig, MAX_PRE_PUBLISH};
use crate::keys::{KeyState, Keyring, SigningAlgorithm};
use crate::store::{AuditEvent, Outcome, RequestMeta};

/// How long after a key stops signing it is retired, beyond the longest
/// token lifetime: resource servers' clock-skew leeway.
pub const RETIRE_MARGIN: Duration = Duration::from_secs(120);

/// Rotation settings from `[keys]`.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    pub algorithm: SigningAlgorithm,
    /// Rotate when the signing key has signed this long; `None`: only by hand.
    pub rotation_interval: Option<Duration>,
    /// How long a new key is published before it signs.
    pub pre_publish: Duration,
}

impl KeyPolicy {
    pub fn from_config(keys: &KeysConfig) -> Self {
        let rotation_interval = keys.rotation_interval.get();
        Self {
            algorithm: keys.algorithm,
            rotation_interval: (!rotation_interval.is_zero()).then_some(rotation_interval),
            pre_publish: keys.pre_publish.get(),
        }
    }
}

/// A key as `GET /v1/keys` and `halflife keys list` show it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: &'static str,
    pub state: KeyState,
    #[serde(with = "time::serde::rfc3339")]
    pub activates_at: OffsetDateTime,
    /// When it stopped signing, if it has.
    #[serde(with = "time::serde::rfc3339::option")]
    pub superseded_at: Option<OffsetDateTime>,
    /// When it is (or was) withdrawn: set for retired keys, and for
    /// superseded keys the time they become due.
    #[serde(with = "time::serde::rfc3339::option")]
    pub retire_at: Option<OffsetDateTime>,
    pub public_jwk: Value,
}

fn key_event(kind: &str, actor: &str, now: OffsetDateTime, meta: &RequestMeta, detail: Value) -> AuditEvent {
    let mut event = AuditEvent::new(kind, Outcome::Success, now, meta);
    event.actor = Some(actor.to_owned());
    event.detail = Some(detail);
    event
}

fn rfc3339(t: OffsetDateTime) -> String {
    crate::domain::rfc3339(t)
}

impl Broker {
    /// When a key superseded at `superseded` may be retired: every token it
    /// signed has expired by then.
    fn retirement_due(&self, superseded: OffsetDateTime) -> OffsetDateTime {
        superseded + self.limits.ceiling + RETIRE_MARGIN
    }

    /// Every key and what it does now.
    pub fn key_list(&self, now: OffsetDateTime) -> Vec<KeyInfo> {
        let keys = self.keys.get();
        keys.schedule(now)
            .into_iter()
            .map(|(k, state)| {
                let superseded_at = keys.superseded_at(k.key.kid(), now);
                let retire_at = k.retired_at.or_else(|| superseded_at.map(|s| self.retirement_due(s)));
                KeyInfo {
                    kid: k.key.kid().to_owned(),
                    alg: k.key.algorithm().as_str(),
                    state,
                    activates_at: k.activates_at,
                    superseded_at,
                    retire_at,
                    public_jwk: k.key.public_jwk().clone(),
                }
            })
            .collect()
    }

    /// Reads the stored keys and swaps the keyring if they changed (a
    /// rotation or retirement here or on another replica). Returns whether
    /// it changed.
    pub async fn reload_keys(&self) -> Result<bool, Unavailable> {
        let _one_at_a_time = self.keys.reloading().await;
        let stored = self.key_store.signing_keys().await.map_err(Unavailable)?;
        let current = self.keys.get();
        let mut stored_view: Vec<_> = stored.iter().map(|s| (s.kid.as_str(), s.activation(), s.retired_at)).collect();
        let mut held: Vec<_> = current
            .schedule(self.clock.now())
            .into_iter()
            .map(|(k, _)| (k.key.kid(), k.activates_at, k.retired_at))
            .collect();
        stored_view.sort_unstable();
        held.sort_unstable();
        if stored_view == held {
            return Ok(false);
        }
        match Keyring::reopen(&stored, self.key_policy.algorithm, &self.kek, Some(&current)) {
            Ok(keyring) => {
                self.keys.set(keyring);
                Ok(true)
            }
            Err(e) => {
                // A key this replica cannot open (another KEK?) must not
                // take signing down: keep the keys it has, loudly.
                tracing::error!(error = %e, "stored signing keys changed but cannot be opened; keeping the current keys");
                Ok(false)
            }
        }
    }

    /// Stores the next signing key, published now and signing from
    /// `now + pre_publish` (default: the configured pre-publish time).
    pub async fn rotate_key(
        &self,
        now: OffsetDateTime,
        pre_publish: Option<Duration>,
        actor: &str,
        meta: &RequestMeta,
    ) -> Result<KeyInfo, OpError> {
        self.reload_keys().await?;
        let keys = self.keys.get();
        if let Some((pending, _)) = keys.schedule(now).into_iter().find(|(_, s)| *s == KeyState::Pending) {
            return Err(OpError::Conflict(format!(
                "key {} is already waiting to sign from {}; retire it to cancel that rotation",
                pending.key.kid(),
                rfc3339(pending.activates_at)
            )));
        }
        let wait = pre_publish.unwrap_or(self.key_policy.pre_publish);
        if wait > MAX_PRE_PUBLISH {
            return Err(OpError::invalid("pre_publish", "at most 7 days"));
        }
        let previous = keys.signing(now).kid().to_owned();
        let mut sealed = Keyring::generate_sealed(self.key_policy.algorithm, &self.kek, now)
            .map_err(|e| Internal::new("key generation", e))?;
        let activates_at = now + wait;
        sealed.activates_at = Some(activates_at);
        let event = key_event(
            "key.rotated",
            actor,
            now,
            meta,
            serde_json::json!({"kid": sealed.kid, "alg": sealed.alg, "activates_at": rfc3339(activates_at),
                "previous": previous}),
        );
        self.key_store.add_signing_key(&sealed, false, event).await.map_err(Unavailable)?;
        self.reload_keys().await?;
        tracing::info!(key.kid = %sealed.kid, activates_at = %rfc3339(activates_at), "signing key rotated");
        self.key_list(now)
            .into_iter()
            .find(|k| k.kid == sealed.kid)
            .ok_or_else(|| OpError::NotFound(format!("key {} vanished after it was stored", sealed.kid)))
    }

    /// Withdraws a key: it leaves the JWKS and tokens it signed stop
    /// verifying. The signing key cannot be retired (rotate first); a key
    /// whose tokens may still be valid only with `force`. Retiring a
    /// pending key cancels its rotation.
    pub async fn retire_key(
        &self,
        kid: &str,
        now: OffsetDateTime,
        force: bool,
        actor: &str,
        meta: &RequestMeta,
    ) -> Result<KeyInfo, OpError> {
        self.reload_keys().await?;
        let Some(info) = self.key_list(now).into_iter().find(|k| k.kid == kid) else {
            return Err(OpError::NotFound(format!("no signing key {}", crate::domain::values::truncate(kid, 80))));
        };
        match info.state {
            KeyState::Retired => return Err(OpError::Conflict(format!("key {kid} is already retired"))),
            KeyState::Signing => {
                return Err(OpError::Conflict(format!(
                    "key {kid} signs what is issued now; rotate first (halflife keys rotate), then retire it \
                     once its tokens have expired"
                )));
            }
            KeyState::Verifying => {
                if let Some(due) = info.retire_at
                    && due > now
                    && !force
                {
                    return Err(OpError::Conflict(format!(
                        "tokens signed by key {kid} may be valid until {}; retire it then, or pass force to \
                         make them fail verification now",
                        rfc3339(due)
                    )));
                }
            }
            KeyState::Pending => {}
        }
        let event = key_event(
            "key.retired",
            actor,
            now,
            meta,
            serde_json::json!({"kid": kid, "state": info.state, "forced": force}),
        );
        self.key_store.retire_signing_key(kid, now, event).await.map_err(Unavailable)?;
        self.reload_keys().await?;
        self.key_list(now)
            .into_iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| OpError::NotFound(format!("no signing key {kid}")))
    }

    /// The leader's scheduled key work: rotate when the signing key is due,
    /// retire superseded keys whose tokens have all expired. Returns what
    /// it did, as `(rotated kid, retired kids)`.
    pub async fn maintain_keys(&self, now: OffsetDateTime) -> Result<(Option<String>, Vec<String>), Failure> {
        self.reload_keys().await?;
        let meta = RequestMeta::default();
        let mut retired = Vec::new();
        for info in self.key_list(now) {
            if info.state == KeyState::Verifying
                && info.alg == self.key_policy.algorithm.as_str()
                && info.retire_at.is_some_and(|due| due <= now)
            {
                match self.retire_key(&info.kid, now, false, "schedule", &meta).await {
                    Ok(_) => retired.push(info.kid),
                    Err(OpError::Unavailable(u)) => return Err(u.into()),
                    Err(OpError::Internal(i)) => return Err(i.into()),
                    Err(e) => tracing::warn!(key.kid = %info.kid, error = %e, "scheduled key retirement skipped"),
                }
            }
        }
        let mut rotated = None;
        if let Some(interval) = self.key_policy.rotation_interval {
            let list = self.key_list(now);
            let pending = list.iter().any(|k| k.state == KeyState::Pending);
            let due = list.iter().any(|k| k.state == KeyState::Signing && k.activates_at + interval <= now);
            if due && !pending {
                match self.rotate_key(now, None, "schedule", &meta).await {
                    Ok(info) => rotated = Some(info.kid),
                    Err(OpError::Unavailable(u)) => return Err(u.into()),
                    Err(OpError::Internal(i)) => return Err(i.into()),
                    Err(e) => tracing::warn!(error = %e, "scheduled key rotation skipped"),
                }
            }
        }
        Ok((rotated, retired))
    }
}

//! Injected storage faults: with a share of storage calls failing (before
//! reaching the database, or after it committed), every exchange ends
//! either with a credential whose issuance record is committed, or with
//! "unavailable" and no credential. Nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use halflife::broker::exchange::{ExchangeError, ExchangeRequest, Proof};
use halflife::domain::model::GrantContext;
use halflife::domain::policy::Ask;
use halflife::store::{
    AuditEvent, CredentialRecord, CredentialStore, Issuance, IssuanceLog, IssueOutcome, PolicyStore, RequestMeta,
    StoreError, StoredSecret,
};
use secrecy::SecretString;
use time::OffsetDateTime;

use crate::helpers::*;

/// Where an injected fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strike {
    /// The call never reaches the database.
    Before,
    /// The database did the work; the caller is told it failed.
    After,
}

/// Wraps the exchange path's stores and fails `percent` of their calls,
/// half before and half after the real call, from a seeded generator so a
/// failure can be replayed.
struct Faulty {
    policy: Arc<dyn PolicyStore>,
    log: Arc<dyn IssuanceLog>,
    credentials: Arc<dyn CredentialStore>,
    percent: u64,
    state: AtomicU64,
    injected: AtomicUsize,
}

impl Faulty {
    fn new(broker: &halflife::broker::Broker, percent: u64, seed: u64) -> Self {
        Self {
            policy: Arc::clone(&broker.policy),
            log: Arc::clone(&broker.log),
            credentials: Arc::clone(&broker.credentials),
            percent,
            state: AtomicU64::new(seed.max(1)),
            injected: AtomicUsize::new(0),
        }
    }

    /// xorshift64: small, seeded, good enough to spread faults.
    fn roll(&self) -> u64 {
        let mut x = self.state.load(Ordering::Relaxed);
        loop {
            let mut next = x;
            next ^= next << 13;
            next ^= next >> 7;
            next ^= next << 17;
            match self.state.compare_exchange_weak(x, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => x = seen,
            }
        }
    }

    fn strike(&self) -> Option<Strike> {
        let roll = self.roll();
        if roll % 100 >= self.percent {
            return None;
        }
        let strike = if (roll / 100).is_multiple_of(2) { Strike::Before } else { Strike::After };
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(strike)
    }

    async fn around<T, F>(&self, call: &'static str, real: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let injected = || StoreError::Unavailable(format!("injected fault in {call}"));
        match self.strike() {
            Some(Strike::Before) => Err(injected()),
            Some(Strike::After) => {
                let _ = real.await;
                Err(injected())
            }
            None => real.await,
        }
    }
}

#[async_trait]
impl PolicyStore for Faulty {
    async fn grants_for_issuer(&self, issuer: &str) -> Result<Arc<Vec<GrantContext>>, StoreError> {
        self.around("grants_for_issuer", self.policy.grants_for_issuer(issuer)).await
    }
}

#[async_trait]
impl IssuanceLog for Faulty {
    async fn record_issuance(&self, issuance: Issuance) -> Result<IssueOutcome, StoreError> {
        self.around("record_issuance", self.log.record_issuance(issuance)).await
    }
    async fn record_event(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.around("record_event", self.log.record_event(event)).await
    }
    async fn revoke_credential(&self, jti: &str, reason: &str, event: AuditEvent) -> Result<bool, StoreError> {
        self.around("revoke_credential", self.log.revoke_credential(jti, reason, event)).await
    }
}

#[async_trait]
impl CredentialStore for Faulty {
    async fn credential(&self, jti: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.around("credential", self.credentials.credential(jti)).await
    }
    async fn secret_credential(&self, hash: &str) -> Result<Option<StoredSecret>, StoreError> {
        self.around("secret_credential", self.credentials.secret_credential(hash)).await
    }
    async fn prune_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.around("prune_expired", self.credentials.prune_expired(now)).await
    }
}

#[tokio::test]
async fn with_storage_failing_every_exchange_is_recorded_or_refused() {
    let Some(app) = spawn_with(Options {
        extra_config: "[rate_limits]\nper_workload_per_minute = 0\n".into(),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let faulty = Arc::new(Faulty::new(&app.broker, 30, 0x5eed_f00d));
    let mut broker = app.broker.clone();
    broker.policy = faulty.clone();
    broker.log = faulty.clone();
    broker.credentials = faulty.clone();

    const EXCHANGES: usize = 240;
    let mut tasks = Vec::new();
    for i in 0..EXCHANGES {
        let broker = broker.clone();
        // Every third one is forged: its denial record is a write too.
        let token = if i % 3 == 2 {
            TestIssuer::ec(EC_ISS).token(EC_SUBJECT, app.now())
        } else {
            app.rsa.token(RSA_SUBJECT, app.now())
        };
        tasks.push(tokio::spawn(async move {
            let request = ExchangeRequest {
                proof: Proof::SubjectToken(SecretString::from(token)),
                ask: Ask::default(),
                peer: None,
                dpop: None,
            };
            broker.exchange(request, &RequestMeta::default()).await
        }));
    }
    let (mut issued, mut unavailable, mut denied) = (Vec::new(), 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(credential) => issued.push(credential.jti),
            Err(ExchangeError::Unavailable(_)) => unavailable += 1,
            Err(ExchangeError::Denied(d)) => {
                assert!(d.reason.contains("no key of issuer spire"), "only forgeries may be denied: {d:?}");
                denied += 1;
            }
            Err(other) => panic!("unexpected outcome: {other:?}"),
        }
    }
    let injected = faulty.injected.load(Ordering::Relaxed);
    assert!(injected > 20 && unavailable > 0 && !issued.is_empty() && denied > 0, "faults did not bite: {injected}");

    // Every credential a caller received has its row and issuance event.
    let mut without_record = 0;
    let issued_events: Vec<String> = app.events("credential.issued").await.into_iter().filter_map(|e| e.jti).collect();
    let mut raw = app.raw().await;
    for jti in &issued {
        let row: i64 = raw.scalar(&format!("SELECT COUNT(*) FROM credentials WHERE {}", raw.id_is("jti", jti))).await;
        if row != 1 || !issued_events.contains(jti) {
            without_record += 1;
        }
    }
    // And no credential row lacks its event (a fault after commit may leave
    // a recorded credential nobody received, never the reverse).
    let rows = app.credential_count().await;
    assert_eq!(rows, i64::try_from(issued_events.len()).unwrap(), "credential rows and issuance events differ");
    assert!(rows >= i64::try_from(issued.len()).unwrap());
    let report = app.broker.verify_audit(None, None).await.unwrap();
    assert!(report.ok, "audit chain broken: {:?}", report.first_problem);

    println!(
        "FAULTS exchanges={EXCHANGES} injected={injected} issued={} unavailable={unavailable} denied={denied}",
        issued.len()
    );
    scoreboard("faults", injected, without_record);
    assert_eq!(without_record, 0, "credentials without a committed record");
}

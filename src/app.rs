//! Composition root: config → store → keys → broker → listener, background
//! tasks, graceful shutdown. The only module that knows all the others.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use url::Url;

use crate::attest::dev::DevIssuer;
use crate::attest::jwt::{IssuerKeys, TrustedIssuer, Verifier};
use crate::attest::x509::{TrustBundles, TrustDomainSource};
use crate::attest::{issuer_from_config, jwks};
use crate::broker::audit::CheckpointPolicy;
use crate::broker::{Broker, Webhook, apply};
use crate::clock::SharedClock;
use crate::config::{Config, DevConfig};
use crate::domain::catalog::{ApplyReport, Catalog, Change};
use crate::domain::policy::TtlPolicy;
use crate::http::serve::{ServeOptions, mtls_acceptor, serve, tls_acceptor};
use crate::http::{AppState, Limits, StateParts, metadata_document, router};
use crate::keys::{Kek, KekSource, Keyring};
use crate::mint::login::{BackendSpec, PgLogins};
use crate::store::{
    AuditEvent, Backend, CatalogStore, Coordination, KeyStore, OpenOptions, Opened, Outcome, RequestMeta,
};
use secrecy::SecretString;

/// How often the checkpoint writer looks at the audit head.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);

/// How often expired single-use records are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A built application: listener bound, state ready, not yet serving.
pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    base_url: String,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    serve_options: ServeOptions,
    broker: Broker,
    store: Arc<dyn Backend>,
    leader: Arc<dyn Coordination>,
    remote_issuers: Vec<(Arc<TrustedIssuer>, Duration)>,
    /// `None` when the caller drives lifecycle passes and checkpoints itself.
    lifecycle_tick: Option<Duration>,
    sync_interval: Duration,
    checkpoints: CheckpointPolicy,
    /// The mTLS listener and the router it serves.
    mtls: Option<(MtlsListener, axum::Router)>,
}

/// The mTLS listener for X.509-SVID attestation, and its trust bundles.
struct MtlsListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    base_url: String,
    acceptor: TlsAcceptor,
    bundles: Arc<TrustBundles>,
    refresh: Duration,
}

/// Loads the key-encryption key the configuration names.
pub fn load_kek(config: &Config) -> anyhow::Result<Kek> {
    let source = match (&config.keys.kek, &config.keys.kek_file) {
        (Some(inline), _) => KekSource::Inline(inline),
        (None, Some(path)) => KekSource::File(path),
        (None, None) if config.dev.enabled => {
            tracing::warn!(
                path = %config.keys.dir.join("kek").display(),
                "no key-encryption key configured; dev mode generated one next to the keys. \
                 Configure keys.kek_file outside development"
            );
            KekSource::DevGenerated(config.keys.dir.join("kek"))
        }
        (None, None) => bail!("keys.kek_file or HALFLIFE_KEYS__KEK is required outside dev mode"),
    };
    Ok(Kek::load(source)?)
}

/// The signing keys every replica shares: read from the database; key
/// files of earlier versions are imported once; when no key of the
/// configured algorithm exists, one is created (the first replica to ask
/// wins, the others load its key).
pub async fn shared_keyring(
    store: &dyn KeyStore,
    config: &Config,
    kek: &Kek,
    now: time::OffsetDateTime,
) -> anyhow::Result<Keyring> {
    let alg = config.keys.algorithm;
    let event = |kind: &str, kid: &str, key_alg: &str| {
        let mut event = AuditEvent::new(kind, Outcome::Success, now, &RequestMeta::default());
        event.actor = Some("startup".into());
        event.detail = Some(serde_json::json!({"kid": kid, "alg": key_alg}));
        event
    };
    let mut stored = store.signing_keys().await?;
    for file_key in Keyring::file_keys(&config.keys.dir)? {
        if !stored.iter().any(|k| k.kid == file_key.kid)
            && store.add_signing_key(&file_key, false, event("key.imported", &file_key.kid, &file_key.alg)).await?
        {
            tracing::info!(key.kid = %file_key.kid, dir = %config.keys.dir.display(), "imported a signing key file into the database");
        }
    }
    if !stored.iter().any(|k| k.alg == alg.as_str() && k.retired_at.is_none()) {
        let key = Keyring::generate_sealed(alg, kek, now)?;
        if store.add_signing_key(&key, true, event("key.created", &key.kid, alg.as_str())).await? {
            tracing::info!(key.kid = %key.kid, key.alg = alg.as_str(), "created signing key");
        }
    }
    stored = store.signing_keys().await?;
    Ok(Keyring::from_sealed(&stored, alg, kek)?)
}

/// The configured database backends, their admin passwords read from
/// their files or environment variables.
pub fn database_logins(config: &Config) -> anyhow::Result<PgLogins> {
    let mut specs = Vec::new();
    for b in &config.postgres_backends {
        let url = Url::parse(&b.admin_url).with_context(|| format!("postgres_backends {}: admin_url", b.name))?;
        let admin_password = match (&b.admin_password_file, &b.admin_password_env) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("postgres_backends {}: cannot read {}", b.name, path.display()))?;
                Some(SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned()))
            }
            (None, Some(var)) => Some(SecretString::from(
                std::env::var(var).with_context(|| format!("postgres_backends {}: ${var} is not set", b.name))?,
            )),
            (None, None) => None,
        };
        specs.push(BackendSpec {
            name: b.name.clone(),
            admin_url: b.admin_url.clone(),
            admin_password,
            grants: b.grants.clone(),
            connection_limit: b.connection_limit,
            max_ttl: b.max_ttl.get(),
            role_prefix: b.role_prefix.clone(),
            host: b.connect_host.clone().unwrap_or_else(|| url.host_str().unwrap_or("localhost").to_owned()),
            port: b.connect_port.unwrap_or_else(|| url.port().unwrap_or(5432)),
            database: url.path().trim_start_matches('/').to_owned(),
        });
    }
    PgLogins::new(specs).map_err(|e| anyhow::anyhow!(e))
}

/// The console as a client of the people provider, when the console is
/// on: its client id and secret (`[console]`, else `[people]`'s) and its
/// redirect URI under the public URL.
fn console_client(
    config: &Config,
    people: &crate::config::PeopleConfig,
    base_url: &str,
) -> anyhow::Result<Option<crate::broker::people::ConsoleClient>> {
    if !config.console.enabled {
        return Ok(None);
    }
    let secret_file = config.console.client_secret_file.as_ref().or(people.client_secret_file.as_ref());
    let client_secret = match secret_file {
        Some(path) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).with_context(|| format!("console: cannot read {}", path.display()))?,
            );
            let secret = text.trim();
            anyhow::ensure!(!secret.is_empty(), "console: {} is empty", path.display());
            Some(SecretString::from(secret.to_owned()))
        }
        None => None,
    };
    Ok(Some(crate::broker::people::ConsoleClient {
        client_id: config.console.client_id.clone().unwrap_or_else(|| people.client_id.clone()),
        client_secret,
        redirect_uri: format!("{base_url}/console/callback"),
    }))
}

/// Names grants may use as `issuer`.
pub fn known_issuers(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.issuers.iter().map(|i| i.name.clone()).collect();
    names.push(DevConfig::ISSUER_NAME.to_owned());
    for td in config.mtls.iter().flat_map(|m| &m.trust_domains) {
        names.push(td.issuer_name().to_owned());
    }
    names.sort();
    names.dedup();
    names
}

/// Reads and validates one declarative file into a catalog.
pub fn read_catalog(config: &Config, path: &Path, now: time::OffsetDateTime) -> anyhow::Result<Catalog> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    let file = apply::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    apply::validate(file, &apply_limits(config), now)
        .map_err(|problems| anyhow::anyhow!("{} is invalid:\n  - {}", path.display(), problems.join("\n  - ")))
}

/// What a catalog must stay within, from the configuration.
pub fn apply_limits(config: &Config) -> apply::Limits {
    apply::Limits {
        issuers: known_issuers(config),
        backends: config.postgres_backends.iter().map(|b| b.name.clone()).collect(),
        ceiling: config.tokens.max_ttl.get(),
        max_pilot: config.lifecycle.max_pilot.get(),
        recertify_every: config.lifecycle.recertify_every.get(),
    }
}

/// Reads, validates and applies one declarative file directly on the
/// database, under the same rules as every other catalog change (see
/// [`crate::broker::catalog`]). `actor` is recorded as its author.
pub async fn apply_file(
    store: &dyn CatalogStore,
    config: &Config,
    path: &Path,
    actor: &str,
    now: time::OffsetDateTime,
    dry_run: bool,
) -> anyhow::Result<ApplyReport> {
    let catalog = read_catalog(config, path, now)?;
    let meta = RequestMeta::default();
    let actor = crate::broker::catalog::Actor { name: actor, meta: &meta };
    let change = Change::Apply(catalog);
    match crate::broker::catalog::change(store, &change, &config.lifecycle.policy(), &actor, now, !dry_run).await {
        Ok(applied) => Ok(applied.plan.report),
        Err(crate::broker::catalog::ChangeError::Refused(refusal)) => {
            Err(anyhow::anyhow!("{} was refused: {refusal}", path.display()))
        }
        Err(crate::broker::catalog::ChangeError::Store(e)) => {
            Err(anyhow::Error::new(e).context(format!("failed to apply {}", path.display())))
        }
    }
}

/// Opens the configured database; `migrate` applies pending migrations
/// whatever `database.auto_migrate` says (`halflife migrate`).
pub async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Opened> {
    let options = OpenOptions {
        url: config.database.url.clone(),
        busy_timeout: config.database.busy_timeout.get(),
        max_connections: config.database.max_connections,
        auto_migrate: migrate || config.database.auto_migrate,
        application_name: format!("halflife {}", config.server.listen),
    };
    crate::store::open(&options).await.with_context(|| format!("failed to open database {}", redacted(&options.url)))
}

/// A database URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl App {
    pub async fn build(mut config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        crate::crypto::install();
        config.validate().map_err(crate::config::ConfigError::Invalid)?;

        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("failed to bind {}", config.server.listen))?;
        let local_addr = listener.local_addr()?;
        if config.server.public_url.is_none() {
            // With port 0 the real port is known only now.
            let scheme = if config.server.tls.is_some() { "https" } else { "http" };
            config.server.public_url = Some(Url::parse(&format!("{scheme}://{local_addr}"))?);
        }
        let base_url = config.server.public_base();

        let tls = match &config.server.tls {
            Some(t) => Some(tls_acceptor(&t.cert_file, &t.key_file).map_err(|e| anyhow::anyhow!(e))?),
            None => None,
        };
        let mut mtls_listener = None;
        if let Some(mtls) = &mut config.mtls {
            let sources = mtls
                .trust_domains
                .iter()
                .map(|td| TrustDomainSource {
                    trust_domain: td.name.clone(),
                    issuer: td.issuer_name().to_owned(),
                    bundle_file: td.bundle_file.clone(),
                })
                .collect();
            let bundles = Arc::new(TrustBundles::load(sources)?);
            let acceptor = mtls_acceptor(&mtls.cert_file, &mtls.key_file, bundles.client_verifier())
                .map_err(|e| anyhow::anyhow!("mtls: {e}"))?;
            let listener = TcpListener::bind(mtls.listen)
                .await
                .with_context(|| format!("failed to bind mtls.listen {}", mtls.listen))?;
            let local_addr = listener.local_addr()?;
            if mtls.public_url.is_none() {
                mtls.public_url = Some(Url::parse(&format!("https://{local_addr}"))?);
            }
            mtls_listener = Some(MtlsListener {
                listener,
                local_addr,
                base_url: mtls.public_base(),
                acceptor,
                bundles,
                refresh: mtls.bundle_refresh_interval.get(),
            });
        }

        let now = clock.now();
        let kek = load_kek(&config)?;
        let Opened { store, leader } = open_store(&config, false).await?;
        let keys = shared_keyring(store.as_ref(), &config, &kek, now).await.context("failed to load signing keys")?;
        for path in &config.bootstrap.apply {
            let report = apply_file(store.as_ref(), &config, path, "bootstrap", now, false).await?;
            if !report.created.is_empty() || !report.updated.is_empty() || !report.suspended.is_empty() {
                tracing::info!(file = %path.display(), created = ?report.created, updated = ?report.updated,
                    suspended = ?report.suspended, "applied bootstrap catalog");
            }
        }

        let client = jwks::http_client().map_err(|e| anyhow::anyhow!("failed to build the JWKS client: {e}"))?;
        let mut issuers = Vec::new();
        let mut remote_issuers = Vec::new();
        if config.dev.enabled {
            tracing::warn!(
                listen = %config.server.listen,
                "the built-in dev issuer is ENABLED: anyone who can run `halflife dev token` on this host can mint \
                 attestations. Never enable it outside development (dev.enabled = false)"
            );
            issuers.push(DevIssuer::load_or_create(&config, &kek, now)?.trusted());
        }
        for issuer in &config.issuers {
            issuers
                .push(issuer_from_config(issuer, &client, &clock).with_context(|| format!("issuer {}", issuer.name))?);
        }
        let verifier = Verifier::new(issuers);
        for issuer in verifier.issuers() {
            if matches!(issuer.keys, IssuerKeys::Remote(_)) {
                let interval = config
                    .issuers
                    .iter()
                    .find(|c| c.name == issuer.name)
                    .map_or(Duration::from_secs(300), |c| c.jwks_refresh_interval.get());
                remote_issuers.push((Arc::clone(issuer), interval));
            }
        }

        let secret_key = Arc::new(kek.derive_hmac_key("halflife credential secrets v1")?);
        let people = match &config.people {
            Some(people) => {
                let console = console_client(&config, people, &base_url)?;
                Some(Arc::new(crate::broker::people::People::new(people, console, client.clone(), Arc::clone(&clock))?))
            }
            None => None,
        };
        let broker = Broker {
            throttle: Arc::new(crate::broker::throttle::Throttle::new(
                crate::broker::throttle::Limits::from_config(&config.rate_limits),
                Arc::clone(&clock),
            )),
            key_store: store.clone(),
            kek: Arc::new(kek),
            key_policy: crate::broker::keys::KeyPolicy::from_config(&config.keys),
            stats: Arc::default(),
            clock,
            verifier: Arc::new(verifier),
            keys: Arc::new(crate::keys::KeyringHandle::new(keys)),
            policy: store.clone(),
            log: store.clone(),
            credentials: store.clone(),
            admin_tokens: store.clone(),
            token_uses: Arc::default(),
            sessions: store.clone(),
            people,
            access: store.clone(),
            approvals: crate::broker::approvals::ApprovalPolicy {
                required_for: config.approvals.required_for.clone(),
                pending_for: config.approvals.pending_for.get(),
                interval: config.approvals.interval.get(),
            },
            lifecycle: store.clone(),
            catalog: store.clone(),
            jobs: store.clone(),
            audit: store.clone(),
            checkpoints: store.clone(),
            issuer: base_url.clone(),
            limits: TtlPolicy { default_ttl: config.tokens.default_ttl.get(), ceiling: config.tokens.max_ttl.get() },
            lifecycle_policy: config.lifecycle.policy(),
            webhook: config.lifecycle.webhook_url.clone().map(|url| Webhook { url, client: client.clone() }),
            issuer_names: Arc::new(known_issuers(&config)),
            verified: Arc::default(),
            seen_proofs: Arc::default(),
            bundles: mtls_listener.as_ref().map(|m| Arc::clone(&m.bundles)),
            dpop_window: config.tokens.dpop_proof_window.get(),
            max_delegation_depth: usize::try_from(config.tokens.max_delegation_depth).unwrap_or(4),
            secret_key,
            logins: Arc::new(database_logins(&config)?),
        };
        let mtls_base = mtls_listener.as_ref().map(|m| m.base_url.as_str());
        let metadata = Arc::new(metadata_document(&base_url, &broker.keys.get().algorithms(), mtls_base));
        let limits = Limits {
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout.get(),
        };
        let refused_connections = crate::http::serve::RefusedConnections::default();
        let metrics = Arc::new(crate::http::metrics::Metrics::new(&broker, &refused_connections));
        let state_for =
            |base: &str, console: Option<Arc<crate::http::console::Settings>>| -> anyhow::Result<AppState> {
                Ok(AppState::new(StateParts {
                    broker: broker.clone(),
                    health: store.clone(),
                    metadata: Arc::clone(&metadata),
                    max_body_bytes: config.server.max_body_bytes,
                    token_endpoint: Arc::new(Url::parse(&format!("{base}/oauth2/token"))?),
                    metrics: Arc::clone(&metrics),
                    console,
                }))
            };
        // The console is served on the main listener only.
        let console = match config.console.enabled {
            true => {
                let url = Url::parse(&base_url)?;
                Some(Arc::new(crate::http::console::Settings {
                    tls: url.scheme() == "https",
                    loopback: crate::config::is_loopback_host(&url),
                    dev_sign_in: config.dev.enabled,
                }))
            }
            false => None,
        };
        let router_main = router(state_for(&base_url, console)?, &limits);
        let mtls = match mtls_listener {
            Some(m) => {
                let mtls_router = router(state_for(&m.base_url, None)?, &limits);
                Some((m, mtls_router))
            }
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            base_url,
            router: router_main,
            tls,
            serve_options: ServeOptions {
                header_read_timeout: config.server.header_read_timeout.get(),
                max_connections: config.server.max_connections,
                max_connections_per_source: config.server.max_connections_per_source,
                shutdown_grace: config.server.shutdown_grace.get(),
                refused: refused_connections,
            },
            broker,
            store,
            leader,
            remote_issuers,
            lifecycle_tick: Some(config.lifecycle.tick.get()),
            sync_interval: config.database.sync_interval.get(),
            checkpoints: CheckpointPolicy {
                every_events: i64::from(config.audit.checkpoint_events),
                every: config.audit.checkpoint_interval.get(),
            },
            mtls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The mTLS listener's address, if one is configured.
    pub fn mtls_addr(&self) -> Option<SocketAddr> {
        self.mtls.as_ref().map(|(m, _)| m.local_addr)
    }

    /// The public base URL (the `iss` of issued tokens).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Runs no background lifecycle passes or checkpoints: the caller calls
    /// [`Broker::run_lifecycle_once`] and [`Broker::write_checkpoint`]
    /// itself (tests with a manual clock).
    pub fn without_background_jobs(mut self) -> Self {
        self.lifecycle_tick = None;
        self
    }

    /// Serves until `shutdown` resolves, then drains connections.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        for (issuer, interval) in self.remote_issuers {
            tasks.push(tokio::spawn(refresh_jwks(issuer, interval)));
        }
        let store = Arc::clone(&self.store);
        let broker = self.broker.clone();
        tasks.push(every_tick(PRUNE_EVERY, Runs::OnEveryReplica, move |_| {
            let (store, broker) = (Arc::clone(&store), broker.clone());
            async move {
                broker.throttle.prune();
                let mut failures = Failures::default();
                let pruned = crate::store::CredentialStore::prune_expired(store.as_ref(), broker.clock.now()).await;
                failures.check("pruning expired records", pruned);
                failures
            }
        }));
        // Every replica, leader or not: keeps its in-memory views current
        // with changes other processes made.
        let store = Arc::clone(&self.store);
        let broker = self.broker.clone();
        tasks.push(every_tick(self.sync_interval, Runs::OnEveryReplica, move |_| {
            let (store, broker) = (Arc::clone(&store), broker.clone());
            async move {
                let mut failures = Failures::default();
                failures.check("checking the database for changes", store.reconcile(broker.clock.now()).await);
                // A key rotated or retired on any replica is published (or
                // withdrawn) here within one interval.
                failures.check("reloading signing keys", broker.reload_keys().await.map_err(|e| e.0));
                failures
            }
        }));
        if let Some(tick) = self.lifecycle_tick {
            let leader = Runs::OnLeader(Arc::clone(&self.leader));
            // The first pass runs at once, so a pilot that ended while the
            // broker was down is suspended at start.
            let broker = self.broker.clone();
            tasks.push(every_tick(tick, leader.clone(), move |_| {
                let broker = broker.clone();
                async move {
                    let mut failures = Failures::default();
                    let report = broker.run_reaper_once(broker.clock.now()).await.map_err(|e| e.0);
                    if let Some(report) = failures.check("lifecycle pass", report)
                        && !report.suspended.is_empty()
                    {
                        tracing::info!(?report, "lifecycle pass");
                    }
                    failures
                }
            }));
            let broker = self.broker.clone();
            let swept = Arc::new(AtomicBool::new(false));
            tasks.push(every_tick(tick, leader.clone(), move |_| {
                let (broker, swept) = (broker.clone(), Arc::clone(&swept));
                async move {
                    let mut failures = Failures::default();
                    if !swept.load(Ordering::Relaxed)
                        && failures.check("login sweep", broker.sweep_logins().await.map_err(|e| e.0)).is_some()
                    {
                        swept.store(true, Ordering::Relaxed);
                    }
                    failures.check("running jobs", broker.run_jobs_once(broker.clock.now()).await.map_err(|e| e.0));
                    let maintained = broker.maintain_keys(broker.clock.now()).await;
                    match failures.check("key maintenance", maintained) {
                        Some((None, retired)) if retired.is_empty() => {}
                        Some((rotated, retired)) => tracing::info!(?rotated, ?retired, "scheduled key maintenance"),
                        None => {}
                    }
                    failures
                }
            }));
            let broker = self.broker.clone();
            let policy = self.checkpoints;
            let state = Arc::new(tokio::sync::Mutex::new(None));
            tasks.push(every_tick(CHECKPOINT_POLL, leader, move |took_lead| {
                let (broker, state) = (broker.clone(), Arc::clone(&state));
                async move {
                    let mut state = state.lock().await;
                    if took_lead {
                        // Another replica may have written checkpoints
                        // until now: continue from where it got to.
                        *state = None;
                    }
                    let state = match &mut *state {
                        Some(state) => state,
                        None => state.insert(broker.last_checkpoint().await.unwrap_or_default()),
                    };
                    let mut failures = Failures::default();
                    let written = broker.checkpoint_if_due(state, policy, broker.clock.now()).await;
                    failures.check("writing an audit checkpoint", written);
                    failures
                }
            }));
        }
        tracing::info!(listen = %self.local_addr, issuer = %self.base_url, tls = self.tls.is_some(), "halflife is serving");
        let grace = self.serve_options.shutdown_grace;
        let final_checkpoint = self.lifecycle_tick.is_some().then(|| (self.broker.clone(), Arc::clone(&self.leader)));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut mtls_server = None;
        if let Some((mtls, mtls_router)) = self.mtls {
            tasks.push(tokio::spawn(reload_bundles(Arc::clone(&mtls.bundles), mtls.refresh)));
            tracing::info!(listen = %mtls.local_addr, url = %mtls.base_url, "mTLS listener (X.509-SVID attestation) is serving");
            let mut stopped = stopped.clone();
            let options = self.serve_options.clone();
            mtls_server =
                Some(tokio::spawn(serve(mtls.listener, Some(mtls.acceptor), mtls_router, options, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })));
        }
        serve(self.listener, self.tls, self.router, self.serve_options, async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
        if let Some(server) = mtls_server {
            let _ = server.await;
        }
        for task in tasks {
            task.abort();
        }
        // Every request has been answered, so everything it recorded is
        // committed; the leader signs the head of the audit chain on the way
        // out, so the last events are under a checkpoint too.
        if let Some((broker, leader)) = final_checkpoint {
            let flush = async {
                if leader.lead().await {
                    broker.write_checkpoint(broker.clock.now()).await.map(|c| c.map(|c| c.seq))
                } else {
                    Ok(None)
                }
            };
            match tokio::time::timeout(grace, flush).await {
                Ok(Ok(Some(seq))) => tracing::info!(audit.seq = seq, "signed a final audit checkpoint"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not sign a final audit checkpoint"),
                Err(_) => tracing::warn!("signing a final audit checkpoint timed out"),
            }
        }
        tracing::info!("halflife stopped");
        Ok(())
    }
}

/// Which replicas run a background task.
#[derive(Clone)]
enum Runs {
    OnEveryReplica,
    /// Only on ticks at which this replica leads.
    OnLeader(Arc<dyn Coordination>),
}

/// What failed in one pass of a background task. Each failure is logged
/// and the next tick tries again.
#[derive(Default)]
struct Failures(Vec<(&'static str, String)>);

impl Failures {
    /// Notes that `what` failed if `result` is an error; its value if not.
    fn check<T, E: std::fmt::Display>(&mut self, what: &'static str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.0.push((what, e.to_string()))).ok()
    }
}

/// Spawns a background task that runs `pass` at once and then every
/// `period` (a late tick waits rather than bursting), and logs what failed
/// in it. With [`Runs::OnLeader`], ticks at which this replica does not
/// lead are skipped, and `pass` is told (`true`) when it runs for the first
/// time since the replica took the lead.
fn every_tick<F, Fut>(period: Duration, runs: Runs, mut pass: F) -> JoinHandle<()>
where
    F: FnMut(bool) -> Fut + Send + 'static,
    Fut: Future<Output = Failures> + Send + 'static,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut led = false;
        loop {
            interval.tick().await;
            let leads = match &runs {
                Runs::OnEveryReplica => true,
                Runs::OnLeader(leader) => leader.lead().await,
            };
            let took_lead = leads && !led;
            led = leads;
            if !leads {
                continue;
            }
            for (what, error) in pass(took_lead).await.0 {
                match runs {
                    Runs::OnEveryReplica => tracing::warn!(%error, "{what} failed; will retry"),
                    Runs::OnLeader(_) => tracing::error!(%error, "{what} failed; will retry next tick"),
                }
            }
        }
    })
}

/// Keeps a remote JWKS fresh: fetches at once, then every `interval`
/// (retrying sooner after a failure).
async fn refresh_jwks(issuer: Arc<TrustedIssuer>, interval: Duration) {
    let IssuerKeys::Remote(remote) = &issuer.keys else {
        return;
    };
    loop {
        let wait = match remote.refresh().await {
            Ok(_) => interval,
            Err(_) => interval.min(Duration::from_secs(5)),
        };
        tokio::time::sleep(wait).await;
    }
}

/// Re-reads the trust bundles every `every`, and at once on SIGHUP.
async fn reload_bundles(bundles: Arc<TrustBundles>, every: Duration) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = hup => tracing::info!("SIGHUP: reloading trust bundles"),
            }
        }
        #[cfg(not(unix))]
        tick.tick().await;
        let bundles = Arc::clone(&bundles);
        // File reads and certificate parsing stay off the async workers.
        let _ = tokio::task::spawn_blocking(move || bundles.reload()).await;
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

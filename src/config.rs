//! Typed configuration: one TOML file plus `HALFLIFE_*` environment overrides.
//!
//! Every key can be overridden by an environment variable named `HALFLIFE_`
//! followed by the key path in upper case with `__` between levels, e.g.
//! `HALFLIFE_SERVER__LISTEN=127.0.0.1:9090`. The configuration is validated
//! once at start; the server refuses to start on an unsafe configuration with
//! a message naming the key and how to fix it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use url::Url;

use crate::keys::SigningAlgorithm;

/// The top-level sections that environment variables may override. Other
/// `HALFLIFE_*` variables (such as `HALFLIFE_TOKEN` for the CLI) are not
/// configuration keys and are ignored here.
const SECTIONS: &[&str] = &[
    "server",
    "mtls",
    "database",
    "keys",
    "tokens",
    "dev",
    "issuers",
    "bootstrap",
    "lifecycle",
    "audit",
    "postgres_backends",
    "rate_limits",
];

/// Clock-skew leeway accepted on attestation tokens when none is configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Upper bound on any issuer's `max_token_age`.
pub const MAX_TOKEN_AGE: Duration = Duration::from_secs(366 * 86400);
/// Upper bound on lifecycle periods, so date arithmetic stays in range.
pub const MAX_LIFECYCLE_PERIOD: Duration = Duration::from_secs(10 * 366 * 86400);

/// Upper bound on any issuer's leeway: more would make expired tokens usable
/// for minutes after their expiry.
pub const MAX_LEEWAY: Duration = Duration::from_secs(120);

/// Longest lifetime of a dev attestation (`--ttl` and `dev.token_ttl`).
pub const MAX_DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// The mTLS listener for X.509-SVID attestation (RFC 8705).
    #[serde(default)]
    pub mtls: Option<MtlsConfig>,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub tokens: TokensConfig,
    #[serde(default)]
    pub dev: DevConfig,
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Databases on which workloads get dynamic logins.
    #[serde(default)]
    pub postgres_backends: Vec<PostgresBackendConfig>,
    /// Token-endpoint rate limits.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// People signing in with the organisation's OIDC provider.
    #[serde(default)]
    pub people: Option<PeopleConfig>,
    /// Approvals for sensitive grants.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The web console under `/console/`.
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// `[console]`: the web console for operators, approvers and auditors,
/// served under `/console/` on the main listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// The OpenID Connect client people sign in to the console through
    /// (authorization code with PKCE); default `people.client_id`. Its
    /// redirect URI is `{public URL}/console/callback`.
    pub client_id: Option<String>,
    /// That client's secret (`client_secret_basic`); default
    /// `people.client_secret_file`. Without one the console signs in as a
    /// public client, with PKCE alone.
    pub client_secret_file: Option<PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { enabled: true, client_id: None, client_secret_file: None }
    }
}

/// `[approvals]`: when exchanges wait for a person's approval beyond what
/// grants say, and how long a request waits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Data classifications (e.g. `restricted`) whose systems' grants all
    /// need approval.
    pub required_for: Vec<String>,
    /// How long an access request waits for a decision before it lapses.
    pub pending_for: HumanDuration,
    /// How often a waiting client is told to ask again.
    pub interval: HumanDuration,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self { required_for: Vec::new(), pending_for: HumanDuration::secs(900), interval: HumanDuration::secs(5) }
    }
}

/// The organisation's OpenID Connect provider, with which people sign in
/// (`halflife login`) for a short-lived session, and how its groups map to
/// roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeopleConfig {
    /// The provider's issuer URL (exactly its ID tokens' `iss`); its
    /// keys are found through `{issuer}/.well-known/openid-configuration`.
    pub issuer: Url,
    /// The client people sign in through; ID tokens must name it in `aud`.
    pub client_id: String,
    /// The client's secret, for a confidential client (the console, unless
    /// `console.client_secret_file` names another).
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_people_scopes")]
    pub scopes: Vec<String>,
    /// The ID-token claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Email domains whose people may sign in (empty: any). A person must
    /// then present a verified email in one of them.
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// Which groups give which roles; a person may hold several.
    #[serde(default)]
    pub roles: Vec<PeopleRoleConfig>,
    /// How long a session lasts.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: HumanDuration,
    /// The provider's keys from a file instead of its discovery document
    /// (for a provider this broker cannot reach).
    pub jwks_file: Option<PathBuf>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<AttestationAlgorithm>,
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_interval: HumanDuration,
}

/// `[[people.roles]]`: members of `group` hold `role`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeopleRoleConfig {
    pub group: String,
    /// `admin`, `operator`, `auditor` or `approver`.
    pub role: String,
}

/// The roles a person may hold.
pub const PEOPLE_ROLES: [&str; 4] = ["admin", "operator", "auditor", "approver"];

/// Longest session a person can be given.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(7 * 86400);

fn default_people_scopes() -> Vec<String> {
    ["openid", "email", "profile", "groups"].map(str::to_owned).to_vec()
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_session_ttl() -> HumanDuration {
    HumanDuration::secs(8 * 3600)
}

/// A PostgreSQL database on which halflife creates a role per login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresBackendConfig {
    /// What grants name: kind `postgres:<name>`.
    pub name: String,
    /// The admin connection, without a password:
    /// `postgres://halflife_admin@db.internal:5432/reports`. The role needs
    /// CREATEROLE.
    pub admin_url: String,
    /// File holding the admin password…
    pub admin_password_file: Option<PathBuf>,
    /// …or the environment variable holding it.
    pub admin_password_env: Option<String>,
    /// SQL run for each new role; `{{role}}` is replaced by its quoted name.
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default = "default_connection_limit")]
    pub connection_limit: u32,
    /// Longest a login may live (also capped by the grant and tokens.max_ttl).
    #[serde(default = "default_login_ttl")]
    pub max_ttl: HumanDuration,
    /// Host and port clients are told to connect to; default: admin_url's.
    pub connect_host: Option<String>,
    pub connect_port: Option<u16>,
    /// Prefix of the roles this deployment creates (and the only roles its
    /// sweep drops): `hlf_` or a longer one starting with it, so several
    /// deployments can share one database cluster.
    #[serde(default = "default_role_prefix")]
    pub role_prefix: String,
}

fn default_role_prefix() -> String {
    ROLE_PREFIX.to_owned()
}

fn default_connection_limit() -> u32 {
    2
}
fn default_login_ttl() -> HumanDuration {
    HumanDuration::secs(3600)
}

/// Signed checkpoints of the audit chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Write a checkpoint after this many new events…
    pub checkpoint_events: u32,
    /// …or this long after the last one, whichever comes first.
    pub checkpoint_interval: HumanDuration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { checkpoint_events: 1000, checkpoint_interval: HumanDuration::secs(60) }
    }
}

/// The lifecycle reaper, notices and owner recertification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// How often the reaper looks for ended pilots and lapsed owners.
    pub tick: HumanDuration,
    /// How far ahead owners are warned of a pilot end or attestation lapse.
    pub notice_window: HumanDuration,
    /// How long an owner's recertification lasts.
    pub recertify_every: HumanDuration,
    /// Longest a sandbox or pilot may run before promotion.
    pub max_pilot: HumanDuration,
    /// Notices are POSTed here as JSON (retried; failures never block).
    pub webhook_url: Option<Url>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            tick: HumanDuration::secs(5),
            notice_window: HumanDuration::secs(7 * 86400),
            recertify_every: HumanDuration::secs(90 * 86400),
            max_pilot: HumanDuration::secs(90 * 86400),
            webhook_url: None,
        }
    }
}

impl LifecycleConfig {
    pub fn policy(&self) -> crate::domain::lifecycle::LifecyclePolicy {
        crate::domain::lifecycle::LifecyclePolicy {
            max_pilot: self.max_pilot.get(),
            recertify_every: self.recertify_every.get(),
            notice_window: self.notice_window.get(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP(S) listener binds.
    pub listen: SocketAddr,
    /// Public base URL: the `iss` of issued tokens and the base of metadata
    /// URLs. Defaults to `http(s)://<listen>`.
    pub public_url: Option<Url>,
    /// Serve plain HTTP on a non-loopback address. Off by default: bearer
    /// credentials must not cross a network in clear text.
    pub allow_plain_http: bool,
    pub tls: Option<TlsConfig>,
    pub max_body_bytes: usize,
    pub request_timeout: HumanDuration,
    pub header_read_timeout: HumanDuration,
    pub max_connections: usize,
    /// Most connections one source address may hold open (0: no limit but
    /// `max_connections`), so that one client cannot hold every slot.
    pub max_connections_per_source: usize,
    pub shutdown_grace: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            allow_plain_http: false,
            tls: None,
            max_body_bytes: 64 * 1024,
            request_timeout: HumanDuration::secs(10),
            header_read_timeout: HumanDuration::secs(5),
            max_connections: 4096,
            max_connections_per_source: 256,
            shutdown_grace: HumanDuration::secs(10),
        }
    }
}

impl ServerConfig {
    /// The public base URL without a trailing slash.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", self.listen)
            }
        }
    }
}

/// A second listener that requires client certificates (X.509-SVIDs) and
/// accepts them as attestations: `grant_type=client_credentials` with
/// `tls_client_auth` (RFC 8705 §2), and certificate-bound tokens (§3) for
/// every exchange made over it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    pub listen: SocketAddr,
    /// Public base URL of this listener (advertised as
    /// `mtls_endpoint_aliases`). Defaults to `https://<listen>`.
    pub public_url: Option<Url>,
    /// The listener's own certificate chain and key (PEM).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often bundle files are checked for changes (SIGHUP reloads at
    /// once).
    #[serde(default = "default_bundle_refresh")]
    pub bundle_refresh_interval: HumanDuration,
    pub trust_domains: Vec<TrustDomainConfig>,
}

fn default_bundle_refresh() -> HumanDuration {
    HumanDuration::secs(10)
}

impl MtlsConfig {
    /// The public base URL without a trailing slash.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => format!("https://{}", self.listen),
        }
    }
}

/// A SPIFFE trust domain whose X.509-SVIDs are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDomainConfig {
    /// The trust domain, e.g. `prod.example`.
    pub name: String,
    /// PEM file of the domain's CA certificates (its X.509 bundle).
    pub bundle_file: PathBuf,
    /// The issuer name grants use for this domain's SVIDs; defaults to the
    /// trust domain. Naming a JWT issuer here (e.g. the SPIRE server whose
    /// JWT-SVIDs are configured in [[issuers]]) makes a JWT-SVID and an
    /// X.509-SVID for the same SPIFFE ID match the same grant.
    pub issuer: Option<String>,
}

impl TrustDomainConfig {
    pub fn issuer_name(&self) -> &str {
        self.issuer.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (created on first start) or
    /// `postgres://user@host:5432/db` (several replicas may share it).
    pub url: String,
    /// How long a write waits for a lock held by another process (SQLite)
    /// or for a pooled connection (PostgreSQL) before the request fails
    /// with 503. A write batch taking longer than twice this also fails.
    pub busy_timeout: HumanDuration,
    /// Read connections in the pool (writes go through one writer).
    pub max_connections: u32,
    /// Apply pending migrations at start. With `false`, the broker refuses
    /// to start while any is pending (run `halflife migrate` first).
    pub auto_migrate: bool,
    /// How often each broker checks the database for catalog changes made
    /// by other processes (`halflife apply` against a live SQLite
    /// database; on PostgreSQL, a safety net behind notifications).
    pub sync_interval: HumanDuration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/halflife.db".to_owned(),
            busy_timeout: HumanDuration::secs(5),
            max_connections: 8,
            auto_migrate: true,
            sync_interval: HumanDuration::secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Directory holding the sealed signing keys.
    pub dir: PathBuf,
    /// Algorithm of issued tokens: `EdDSA` (Ed25519) or `ES256`.
    pub algorithm: SigningAlgorithm,
    /// Key-encryption key (32 bytes, base64): seals private keys at rest.
    pub kek: Option<SecretString>,
    /// File holding the key-encryption key (32 raw bytes or base64 text).
    pub kek_file: Option<PathBuf>,
    /// Rotate the signing key after it has signed this long; `0s` rotates
    /// only by hand (`halflife keys rotate`).
    pub rotation_interval: HumanDuration,
    /// How long a new key is published in the JWKS before it signs.
    pub pre_publish: HumanDuration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/keys"),
            algorithm: SigningAlgorithm::EdDSA,
            kek: None,
            kek_file: None,
            rotation_interval: HumanDuration::secs(30 * 86400),
            pre_publish: HumanDuration::secs(600),
        }
    }
}

/// Longest pre-publish window a rotation may ask for.
pub const MAX_PRE_PUBLISH: Duration = Duration::from_secs(7 * 86400);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Lifetime of an issued token when the request names none (capped by the
    /// grant's `max_ttl`).
    pub default_ttl: HumanDuration,
    /// Global ceiling: no credential lives longer, whatever a grant says.
    pub max_ttl: HumanDuration,
    /// How far a DPoP proof's `iat` may be from the broker's clock.
    pub dpop_proof_window: HumanDuration,
    /// Most actors a delegation chain may hold (an agent acting for a
    /// person is one; a sub-agent it passes the token to is two).
    pub max_delegation_depth: u32,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            default_ttl: HumanDuration::secs(300),
            max_ttl: HumanDuration::secs(3600),
            dpop_proof_window: HumanDuration::secs(60),
            max_delegation_depth: 4,
        }
    }
}

/// Token-endpoint rate limits; 0 turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Exchanges per minute one workload (issuer and subject) may make,
    /// also the burst it may make at once.
    pub per_workload_per_minute: u32,
    /// Failed attestations per minute one source address may send before
    /// its requests are refused unchecked.
    pub failures_per_source_per_minute: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self { per_workload_per_minute: 600, failures_per_source_per_minute: 60 }
    }
}

/// The built-in development attestation issuer (`halflife dev token`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    pub enabled: bool,
    /// Audience of dev tokens (what the dev issuer requires).
    pub audience: String,
    /// Lifetime of a dev token.
    pub token_ttl: HumanDuration,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self { enabled: false, audience: "halflife".to_owned(), token_ttl: HumanDuration::secs(600) }
    }
}

impl DevConfig {
    /// The name grants use for the dev issuer.
    pub const ISSUER_NAME: &'static str = "dev";

    /// The `iss` of dev tokens, derived from the public URL.
    pub fn issuer_url(server: &ServerConfig) -> String {
        format!("{}/dev", server.public_base())
    }
}

/// A trusted attestation issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name grants refer to, e.g. `kubernetes`.
    pub name: String,
    /// Exact `iss` value of its tokens.
    pub issuer: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_uri: Option<Url>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<AttestationAlgorithm>,
    /// Audience every token must carry (e.g. `halflife`).
    pub audience: String,
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// Longest accepted `exp - iat`.
    #[serde(default = "default_max_token_age")]
    pub max_token_age: HumanDuration,
    /// Each token (by `jti`, or its SHA-256 when it has none) works once.
    #[serde(default)]
    pub single_use: bool,
    /// Refuse tokens whose `aud` names more than one audience (a list of
    /// exactly one, as Kubernetes issues, stays valid).
    #[serde(default)]
    pub single_audience: bool,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_interval: HumanDuration,
    /// Minimum time between refetches triggered by an unknown `kid`.
    #[serde(default = "default_jwks_cooldown")]
    pub jwks_refresh_cooldown: HumanDuration,
    /// After this long without a successful fetch the cached keys are no
    /// longer trusted and verification fails closed.
    #[serde(default = "default_jwks_max_stale")]
    pub jwks_max_stale: HumanDuration,
}

fn default_algorithms() -> Vec<AttestationAlgorithm> {
    vec![AttestationAlgorithm::RS256, AttestationAlgorithm::ES256]
}
fn default_leeway() -> HumanDuration {
    HumanDuration(DEFAULT_LEEWAY)
}
fn default_max_token_age() -> HumanDuration {
    HumanDuration::secs(24 * 3600)
}
fn default_jwks_refresh() -> HumanDuration {
    HumanDuration::secs(300)
}
fn default_jwks_cooldown() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_jwks_max_stale() -> HumanDuration {
    HumanDuration::secs(24 * 3600)
}

/// Signature algorithms accepted on attestation tokens. `none` and HMAC are
/// not representable: they can never be configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum AttestationAlgorithm {
    RS256,
    ES256,
    /// Ed25519, also written by its fully specified name (RFC 9864).
    #[serde(alias = "Ed25519")]
    EdDSA,
}

impl AttestationAlgorithm {
    pub fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
            Self::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// Declarative files (`halflife apply` format) applied at every start.
    pub apply: Vec<PathBuf>,
}

/// A duration written as `30s`, `10m`, `1h` or `90d`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like 30s, 10m, 1h or 90d"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One problem found in a configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl Config {
    /// Loads `path` (if it exists) and applies `HALFLIFE_*` overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load_unvalidated(path)?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Like [`Config::load`], without the safety checks: for reporting
    /// every problem at once (`halflife config check`). A `path` of
    /// [`ENVIRONMENT_ONLY`] takes the whole configuration from `HALFLIFE_*`
    /// variables; any other path must exist.
    pub fn load_unvalidated(path: &Path) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if path != Path::new(ENVIRONMENT_ONLY) {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file not found: {} (name one with --config <file> or HALFLIFE_CONFIG, or use \
                     --config {ENVIRONMENT_ONLY} to take the whole configuration from HALFLIFE_* variables)",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let figment = with_env(figment)?;
        file_overrides(figment)?.extract().map_err(|e| ConfigError::Load(flatten_figment_error(e)))
    }

    /// Parses a configuration from TOML text plus environment overrides.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::extract(file_overrides(with_env(Figment::new().merge(Toml::string(text)))?)?)
    }

    /// Problems `validate` cannot see: files the configuration names that
    /// cannot be read. `halflife config check` reports them with the rest.
    pub fn unreadable_files(&self) -> Vec<ConfigProblem> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        if let Some(path) = &self.keys.kek_file {
            files.push(("keys.kek_file".into(), path));
        }
        if let Some(tls) = &self.server.tls {
            files.push(("server.tls.cert_file".into(), &tls.cert_file));
            files.push(("server.tls.key_file".into(), &tls.key_file));
        }
        if let Some(mtls) = &self.mtls {
            files.push(("mtls.cert_file".into(), &mtls.cert_file));
            files.push(("mtls.key_file".into(), &mtls.key_file));
            for (i, domain) in mtls.trust_domains.iter().enumerate() {
                files.push((format!("mtls.trust_domains[{i}].bundle_file"), &domain.bundle_file));
            }
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            if let Some(path) = &issuer.jwks_file {
                files.push((format!("issuers[{i}].jwks_file"), path));
            }
        }
        for (i, backend) in self.postgres_backends.iter().enumerate() {
            if let Some(path) = &backend.admin_password_file {
                files.push((format!("postgres_backends[{i}].admin_password_file"), path));
            }
        }
        for (i, path) in self.bootstrap.apply.iter().enumerate() {
            files.push((format!("bootstrap.apply[{i}]"), path));
        }
        files
            .into_iter()
            .filter_map(|(key, path)| {
                std::fs::File::open(path)
                    .err()
                    .map(|e| ConfigProblem { key, message: format!("cannot read {}: {e}", path.display()) })
            })
            .collect()
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|e| ConfigError::Load(flatten_figment_error(e)))?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Every problem in the configuration, each with its key path.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(ConfigProblem { key: key.to_owned(), message });
        let loopback = self.server.listen.ip().is_loopback();

        if self.server.tls.is_none() && !loopback && !self.server.allow_plain_http {
            problem(
                "server.listen",
                format!(
                    "{} is not a loopback address and no [server.tls] is configured; \
                     configure server.tls.cert_file and server.tls.key_file, or set \
                     server.allow_plain_http = true if a TLS-terminating proxy is in front",
                    self.server.listen
                ),
            );
        }
        let sync = self.database.sync_interval.get();
        if sync < Duration::from_millis(10) || sync > Duration::from_secs(3600) {
            problem("database.sync_interval", "must be between 10ms and 1h".to_owned());
        }
        if self.dev.enabled && !loopback {
            problem(
                "dev.enabled",
                format!(
                    "the built-in dev issuer lets anyone mint attestations; it may only run on a \
                     loopback listener, not {}. Set dev.enabled = false",
                    self.server.listen
                ),
            );
        }
        if let Some(url) = &self.server.public_url {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                problem("server.public_url", "must be an http(s) URL with a host".to_owned());
            }
            if url.query().is_some() || url.fragment().is_some() {
                problem("server.public_url", "must not carry a query or fragment".to_owned());
            }
        }
        if self.server.max_body_bytes == 0 || self.server.max_body_bytes > 16 * 1024 * 1024 {
            problem("server.max_body_bytes", "must be between 1 and 16 MiB".to_owned());
        }
        if self.server.max_connections == 0 {
            problem("server.max_connections", "must be at least 1".to_owned());
        }
        for (key, d) in [
            ("server.request_timeout", self.server.request_timeout),
            ("server.header_read_timeout", self.server.header_read_timeout),
        ] {
            if d.get().is_zero() {
                problem(key, "must be greater than zero".to_owned());
            }
        }
        if BackendKind::of(&self.database.url).is_none() {
            problem(
                "database.url",
                "must be sqlite://path (e.g. sqlite://data/halflife.db) or postgres://user@host/db".to_owned(),
            );
        }
        if self.database.max_connections == 0 {
            problem("database.max_connections", "must be at least 1".to_owned());
        }
        if self.dev.token_ttl.get().is_zero() || self.dev.token_ttl.get() > MAX_DEV_TOKEN_TTL {
            problem("dev.token_ttl", "must be between 1s and 24h".to_owned());
        }
        if self.tokens.default_ttl.get().is_zero() {
            problem("tokens.default_ttl", "must be greater than zero".to_owned());
        }
        if self.tokens.max_ttl.get() > Duration::from_secs(24 * 3600) {
            problem("tokens.max_ttl", "must not exceed 24h: these are short-lived credentials".to_owned());
        }
        if self.tokens.default_ttl > self.tokens.max_ttl {
            problem(
                "tokens.default_ttl",
                format!("{} exceeds tokens.max_ttl ({})", self.tokens.default_ttl, self.tokens.max_ttl),
            );
        }
        let window = self.tokens.dpop_proof_window.get();
        if window.is_zero() || window > Duration::from_secs(600) {
            problem("tokens.dpop_proof_window", "must be between 1s and 10m".to_owned());
        }
        if !(1..=16).contains(&self.tokens.max_delegation_depth) {
            problem("tokens.max_delegation_depth", "must be between 1 and 16".to_owned());
        }
        if let Some(mtls) = &self.mtls {
            self.validate_mtls(mtls, &mut problem);
        }
        let mut backend_names = std::collections::HashSet::new();
        for (i, b) in self.postgres_backends.iter().enumerate() {
            let key = |field: &str| format!("postgres_backends[{i}].{field}");
            if !crate::domain::values::is_backend_name(&b.name) {
                problem(&key("name"), "must be 1-32 lower-case letters, digits or '_'".to_owned());
            }
            if !backend_names.insert(b.name.as_str()) {
                problem(&key("name"), format!("backend {:?} is configured twice", b.name));
            }
            match Url::parse(&b.admin_url) {
                Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") && url.host().is_some() => {
                    if url.password().is_some() {
                        problem(
                            &key("admin_url"),
                            "must not carry a password; put it in admin_password_file or admin_password_env".to_owned(),
                        );
                    }
                    if url.path().trim_start_matches('/').is_empty() {
                        problem(
                            &key("admin_url"),
                            "must name the database, e.g. postgres://admin@db:5432/reports".to_owned(),
                        );
                    }
                }
                _ => problem(&key("admin_url"), "must be a postgres://user@host:port/database URL".to_owned()),
            }
            if b.admin_password_file.is_some() && b.admin_password_env.is_some() {
                problem(
                    &key("admin_password_file"),
                    "set admin_password_file or admin_password_env, not both".to_owned(),
                );
            }
            for (j, grant) in b.grants.iter().enumerate() {
                if !grant.contains("{{role}}") {
                    problem(
                        &format!("postgres_backends[{i}].grants[{j}]"),
                        "must name the new role as {{role}}".to_owned(),
                    );
                }
            }
            if !b.role_prefix.starts_with(ROLE_PREFIX)
                || b.role_prefix.len() > 16
                || !b.role_prefix.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            {
                problem(&key("role_prefix"), "must start with hlf_, be at most 16 of a-z, 0-9 and _".to_owned());
            }
            if b.connection_limit == 0 {
                problem(&key("connection_limit"), "must be at least 1".to_owned());
            }
            if b.max_ttl.get().is_zero() || b.max_ttl > self.tokens.max_ttl {
                problem(&key("max_ttl"), format!("must be between 1s and tokens.max_ttl ({})", self.tokens.max_ttl));
            }
        }
        if self.keys.pre_publish.get() > MAX_PRE_PUBLISH {
            problem("keys.pre_publish", "at most 7d".to_owned());
        }
        let interval = self.keys.rotation_interval.get();
        if !interval.is_zero() && (interval < Duration::from_secs(3600) || interval <= self.keys.pre_publish.get()) {
            problem(
                "keys.rotation_interval",
                "0s (rotate by hand), or at least 1h and longer than keys.pre_publish".to_owned(),
            );
        }
        if self.keys.kek.is_some() && self.keys.kek_file.is_some() {
            problem("keys.kek", "set keys.kek or keys.kek_file, not both".to_owned());
        }
        if self.keys.kek.is_none() && self.keys.kek_file.is_none() && !self.dev.enabled {
            problem(
                "keys.kek_file",
                "a key-encryption key is required outside dev mode: set keys.kek_file (32 random \
                 bytes, e.g. `head -c32 /dev/urandom | base64 > kek`) or HALFLIFE_KEYS__KEK"
                    .to_owned(),
            );
        }

        if self.lifecycle.tick.get().is_zero() {
            problem("lifecycle.tick", "must be greater than zero".to_owned());
        }
        if self.audit.checkpoint_events == 0 {
            problem("audit.checkpoint_events", "must be at least 1".to_owned());
        }
        if self.audit.checkpoint_interval.get().is_zero() {
            problem("audit.checkpoint_interval", "must be greater than zero".to_owned());
        }
        for (key, d) in [
            ("lifecycle.notice_window", self.lifecycle.notice_window),
            ("lifecycle.recertify_every", self.lifecycle.recertify_every),
            ("lifecycle.max_pilot", self.lifecycle.max_pilot),
        ] {
            if d.get().is_zero() || d.get() > MAX_LIFECYCLE_PERIOD {
                problem(key, format!("must be between 1s and {}", HumanDuration(MAX_LIFECYCLE_PERIOD)));
            }
        }
        if let Some(url) = &self.lifecycle.webhook_url
            && let Err(message) = check_https_url(url, "notices sent")
        {
            problem("lifecycle.webhook_url", message);
        }

        if let Some(client_id) = &self.console.client_id
            && (client_id.is_empty() || client_id.len() > 256)
        {
            problem("console.client_id", "must be 1-256 characters".to_owned());
        }
        if self.console.client_id.is_some() && self.people.is_none() {
            problem("console.client_id", "people sign in to the console through [people]: configure it too".to_owned());
        }
        if let Some(people) = &self.people {
            people.check(&mut problem);
        }
        let pending = self.approvals.pending_for.get();
        if pending < Duration::from_secs(60) || pending > Duration::from_secs(7 * 86400) {
            problem("approvals.pending_for", "must be between 1m and 7d".to_owned());
        }
        let interval = self.approvals.interval.get();
        if interval < Duration::from_secs(1) || interval > Duration::from_secs(60) {
            problem("approvals.interval", "must be between 1s and 1m".to_owned());
        }
        if self.approvals.required_for.iter().any(|c| c.trim().is_empty()) {
            problem("approvals.required_for", "list data classifications such as \"restricted\"".to_owned());
        }

        let mut names = std::collections::HashSet::new();
        let mut urls = std::collections::HashSet::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("issuers[{i}].{field}");
            if issuer.name.is_empty() || !issuer.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problem(&key("name"), "must be non-empty letters, digits, '-' or '_'".to_owned());
            }
            if issuer.name == DevConfig::ISSUER_NAME {
                problem(&key("name"), "\"dev\" is reserved for the built-in dev issuer".to_owned());
            }
            if !names.insert(issuer.name.clone()) {
                problem(&key("name"), format!("duplicate issuer name {:?}", issuer.name));
            }
            if issuer.issuer.is_empty() {
                problem(&key("issuer"), "must not be empty".to_owned());
            } else if issuer.issuer.trim_end_matches('/') == self.server.public_base()
                || issuer.issuer == DevConfig::issuer_url(&self.server)
            {
                problem(
                    &key("issuer"),
                    format!(
                        "{:?} is this broker's own (or its dev issuer's) URL; its tokens are not attestations",
                        issuer.issuer
                    ),
                );
            } else if !urls.insert(issuer.issuer.clone()) {
                problem(&key("issuer"), format!("issuer {:?} is configured twice", issuer.issuer));
            }
            match (&issuer.jwks_file, &issuer.jwks_uri) {
                (None, None) => problem(&key("jwks_uri"), "set jwks_uri or jwks_file".to_owned()),
                (Some(_), Some(_)) => problem(&key("jwks_uri"), "set jwks_uri or jwks_file, not both".to_owned()),
                (None, Some(uri)) => {
                    if let Err(message) = check_https_url(uri, "keys fetched") {
                        problem(&key("jwks_uri"), message);
                    }
                }
                (Some(_), None) => {}
            }
            if issuer.algorithms.is_empty() {
                problem(&key("algorithms"), "list at least one of RS256, ES256, EdDSA".to_owned());
            }
            if issuer.audience.is_empty() || issuer.audience == "*" {
                problem(
                    &key("audience"),
                    "must name the audience this broker requires (e.g. \"halflife\"); wildcards are refused".to_owned(),
                );
            }
            if issuer.leeway.get() > MAX_LEEWAY {
                problem(&key("leeway"), format!("must not exceed {}", HumanDuration(MAX_LEEWAY)));
            }
            if issuer.max_token_age.get().is_zero() || issuer.max_token_age.get() > MAX_TOKEN_AGE {
                problem(&key("max_token_age"), format!("must be between 1s and {}", HumanDuration(MAX_TOKEN_AGE)));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    fn validate_mtls(&self, mtls: &MtlsConfig, problem: &mut impl FnMut(&str, String)) {
        if mtls.listen == self.server.listen && mtls.listen.port() != 0 {
            problem("mtls.listen", format!("{} is already server.listen; use another port", mtls.listen));
        }
        if let Some(url) = &mtls.public_url
            && (url.scheme() != "https" || url.host().is_none() || url.query().is_some() || url.fragment().is_some())
        {
            problem("mtls.public_url", "must be an https URL with a host and no query or fragment".to_owned());
        }
        if mtls.bundle_refresh_interval.get() < Duration::from_millis(10) {
            problem("mtls.bundle_refresh_interval", "must be at least 10ms".to_owned());
        }
        if mtls.trust_domains.is_empty() {
            problem("mtls.trust_domains", "list at least one trust domain and its bundle_file".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, td) in mtls.trust_domains.iter().enumerate() {
            let key = |field: &str| format!("mtls.trust_domains[{i}].{field}");
            if let Err(e) = crate::domain::spiffe::validate_trust_domain(&td.name) {
                problem(&key("name"), format!("{:?} {e}", td.name));
            }
            if !seen.insert(td.name.as_str()) {
                problem(&key("name"), format!("trust domain {:?} is configured twice", td.name));
            }
            let issuer = td.issuer_name();
            if issuer == DevConfig::ISSUER_NAME {
                problem(&key("issuer"), "\"dev\" is reserved for the built-in dev issuer".to_owned());
            } else if issuer.is_empty()
                || issuer.len() > 255
                || !issuer.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                problem(&key("issuer"), "must be 1-255 letters, digits, '-', '_' or '.'".to_owned());
            }
        }
    }
}

/// A URL must be HTTPS unless it points at the loopback interface; `what`
/// names what would travel over it.
impl PeopleConfig {
    fn check(&self, problem: &mut impl FnMut(&str, String)) {
        if let Err(message) = check_https_url(&self.issuer, "ID tokens and keys fetched") {
            problem("people.issuer", message);
        }
        if self.issuer.query().is_some() || self.issuer.fragment().is_some() {
            problem("people.issuer", "must not carry a query or fragment".to_owned());
        }
        if self.client_id.trim().is_empty() || self.client_id.len() > 256 {
            problem("people.client_id", "must be 1-256 characters".to_owned());
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            problem("people.scopes", "must include \"openid\"".to_owned());
        }
        if self.groups_claim.is_empty() {
            problem("people.groups_claim", "must name a claim".to_owned());
        }
        for (i, domain) in self.allowed_email_domains.iter().enumerate() {
            if domain.is_empty() || domain.contains('@') || domain.chars().any(char::is_whitespace) {
                problem(
                    &format!("people.allowed_email_domains[{i}]"),
                    "must be a domain such as example.com".to_owned(),
                );
            }
        }
        if self.roles.is_empty() {
            problem(
                "people.roles",
                "map at least one group to a role ([[people.roles]] group = \"…\", role = \"operator\"); \
                 without one nobody can sign in"
                    .to_owned(),
            );
        }
        for (i, mapping) in self.roles.iter().enumerate() {
            if mapping.group.is_empty() {
                problem(&format!("people.roles[{i}].group"), "must name a group".to_owned());
            }
            if !PEOPLE_ROLES.contains(&mapping.role.as_str()) {
                problem(
                    &format!("people.roles[{i}].role"),
                    format!("{:?} is not a role people hold: use admin, operator, auditor or approver", mapping.role),
                );
            }
        }
        let ttl = self.session_ttl.get();
        if ttl < Duration::from_secs(60) || ttl > MAX_SESSION_TTL {
            problem("people.session_ttl", format!("must be between 1m and {}", HumanDuration(MAX_SESSION_TTL)));
        }
        if self.algorithms.is_empty() {
            problem("people.algorithms", "list at least one of RS256, ES256, EdDSA".to_owned());
        }
        if self.leeway.get() > MAX_LEEWAY {
            problem("people.leeway", format!("must not exceed {}", HumanDuration(MAX_LEEWAY)));
        }
        if self.jwks_refresh_interval.get().is_zero() {
            problem("people.jwks_refresh_interval", "must be greater than zero".to_owned());
        }
    }

    /// The issuer as ID tokens carry it: the configured URL as written,
    /// without the slash `Url` adds to a bare host.
    pub fn issuer_id(&self) -> String {
        let text = self.issuer.as_str();
        if self.issuer.path() == "/" { text.trim_end_matches('/').to_owned() } else { text.to_owned() }
    }
}

fn check_https_url(uri: &Url, what: &str) -> Result<(), String> {
    match uri.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(uri) => Ok(()),
        "http" => Err(format!(
            "{uri} is plain http on a non-loopback host; {what} that way can be read or swapped in transit. Use https"
        )),
        other => Err(format!("unsupported scheme {other:?}; use https")),
    }
}

pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Keys whose value may be a secret, so they may also be given as the
/// contents of a file: `HALFLIFE_DATABASE__URL_FILE=/run/secrets/db-url`.
/// (`keys.kek_file` and `admin_password_file` are file keys already.)
pub const FILE_VARIANTS: &[&str] = &["database.url", "lifecycle.webhook_url"];

fn env_name(key: &str) -> String {
    format!("HALFLIFE_{}", key.to_ascii_uppercase().replace('.', "__"))
}

/// The `--config` value (or `HALFLIFE_CONFIG`) that reads no file: the
/// whole configuration comes from `HALFLIFE_*` variables (containers).
pub const ENVIRONMENT_ONLY: &str = "none";

/// `HALFLIFE_<SECTION>__<KEY>` variables that override keys: at least one
/// `__`, under a known section. A bare `HALFLIFE_SERVER` or `HALFLIFE_TOKEN`
/// is not a key (the CLI uses such names), nor is a variable naming an
/// entry of an array of tables by index (see [`indexed_overrides`]).
fn env_overrides() -> Env {
    Env::prefixed("HALFLIFE_").split("__").filter(|key| {
        let mut parts = key.as_str().split('.');
        let first = parts.next().unwrap_or_default();
        let nested = key.as_str().contains('.');
        let indexed = key.as_str().split('.').any(|p| p.parse::<usize>().is_ok());
        let file_variant = FILE_VARIANTS.iter().any(|k| key.as_str().eq_ignore_ascii_case(&format!("{k}_file")));
        nested && !indexed && SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(first)) && !file_variant
    })
}

/// `figment` with the environment's overrides merged in.
fn with_env(figment: Figment) -> Result<Figment, ConfigError> {
    let figment = figment.merge(env_overrides());
    indexed_overrides(figment, std::env::vars())
}

/// Applies variables that name an entry of an array of tables by its
/// index: `HALFLIFE_ISSUERS__0__AUDIENCE=halflife` sets the first issuer's
/// audience, `HALFLIFE_ISSUERS__1__NAME=…` (with the rest of its keys) adds
/// a second one to a file that has one, and
/// `HALFLIFE_MTLS__TRUST_DOMAINS__0__BUNDLE_FILE=…` reaches into a section.
/// An index may be an existing entry or the next one, never further.
fn indexed_overrides(figment: Figment, vars: impl Iterator<Item = (String, String)>) -> Result<Figment, ConfigError> {
    use figment::value::{Dict, Value};
    /// One variable: the array's path, the index, the key path inside the
    /// entry, the variable's name and its value.
    type Edit = (Vec<String>, usize, Vec<String>, String, String);
    let mut edits: Vec<Edit> = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("HALFLIFE_") else { continue };
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let Some(at) = parts.iter().position(|p| p.parse::<usize>().is_ok()) else { continue };
        if at == 0 || !SECTIONS.contains(&parts[0].as_str()) {
            continue;
        }
        let index = parts[at].parse::<usize>().unwrap_or(usize::MAX);
        edits.push((parts[..at].to_vec(), index, parts[at + 1..].to_vec(), name.clone(), value));
    }
    // Lower indexes first, so entry n exists before n + 1 is added.
    edits.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut arrays: Vec<(String, Vec<Value>)> = Vec::new();
    for (path, index, inner, var, text) in edits {
        let key = path.join(".");
        let slot = match arrays.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let current: Vec<Value> = match figment.find_value(&key) {
                    Ok(Value::Array(_, items)) => items,
                    Ok(_) => return Err(ConfigError::Load(format!("{var}: {key} is not a list"))),
                    Err(_) => Vec::new(),
                };
                arrays.push((key.clone(), current));
                arrays.len() - 1
            }
        };
        let items = &mut arrays[slot].1;
        if index > items.len() {
            return Err(ConfigError::Load(format!(
                "{var}: {key} has {} entr{}; an index names one of them or the next ({})",
                items.len(),
                if items.len() == 1 { "y" } else { "ies" },
                items.len()
            )));
        }
        if index == items.len() {
            items.push(Value::from(Dict::new()));
        }
        let parsed: Value = text.parse().unwrap_or_else(|_: std::convert::Infallible| Value::from(text.clone()));
        if inner.is_empty() {
            items[index] = parsed;
            continue;
        }
        let Value::Dict(_, entry) = &mut items[index] else {
            return Err(ConfigError::Load(format!("{var}: entry {index} of {key} is not a table")));
        };
        let mut node = entry;
        for (i, part) in inner.iter().enumerate() {
            if i + 1 == inner.len() {
                node.insert(part.clone(), parsed.clone());
                break;
            }
            let next = node.entry(part.clone()).or_insert_with(|| Value::from(Dict::new()));
            let Value::Dict(_, dict) = next else {
                return Err(ConfigError::Load(format!("{var}: {} is not a table", inner[..=i].join("."))));
            };
            node = dict;
        }
    }
    Ok(arrays.into_iter().fold(figment, |f, (key, items)| f.merge(Serialized::default(&key, items))))
}

/// Applies `HALFLIFE_<KEY>_FILE` variables: the file's contents (without a
/// trailing newline) become the key's value. Setting both the variable and
/// its `_FILE` form is an error, as is a file that cannot be read; neither
/// error repeats the value.
fn file_overrides(mut figment: Figment) -> Result<Figment, ConfigError> {
    for key in FILE_VARIANTS {
        let var = format!("{}_FILE", env_name(key));
        let Some(path) = std::env::var_os(&var) else { continue };
        if std::env::var_os(env_name(key)).is_some() {
            return Err(ConfigError::Load(format!("set {} or {var}, not both", env_name(key))));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::Load(format!("{var}: cannot read {}: {e}", Path::new(&path).display())))?;
        figment = figment.merge(Serialized::default(key, text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(figment)
}

pub(crate) fn flatten_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source =
                e.metadata.as_ref().and_then(|m| m.source.as_ref()).map(|s| format!(" (from {s})")).unwrap_or_default();
            if path.is_empty() { format!("{}{source}", e.kind) } else { format!("{path}: {}{source}", e.kind) }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which backend a `database.url` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl BackendKind {
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// Every role halflife creates on a workload database starts with this
/// (the sweep drops only such roles).
pub const ROLE_PREFIX: &str = "hlf_";

#[cfg(test)]
mod tests {
    use super::*;

    fn with_vars(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        let figment = indexed_overrides(Figment::new().merge(Toml::string(text)), vars)?;
        figment.extract().map_err(|e| ConfigError::Load(flatten_figment_error(e)))
    }

    #[test]
    fn entries_of_arrays_of_tables_are_overridden_and_added_by_index() {
        let file = "[dev]\nenabled = true\n[[issuers]]\nname = \"k8s\"\nissuer = \"https://k8s.example\"\n\
                    jwks_file = \"/etc/k8s.jwks\"\naudience = \"halflife\"\n";
        let config = with_vars(
            file,
            &[
                ("HALFLIFE_ISSUERS__0__AUDIENCE", "broker"),
                ("HALFLIFE_ISSUERS__1__NAME", "ci"),
                ("HALFLIFE_ISSUERS__1__ISSUER", "https://ci.example"),
                ("HALFLIFE_ISSUERS__1__JWKS_URI", "https://ci.example/jwks"),
                ("HALFLIFE_ISSUERS__1__AUDIENCE", "halflife"),
                ("HALFLIFE_ISSUERS__1__ALGORITHMS", "[\"ES256\"]"),
                ("HALFLIFE_POSTGRES_BACKENDS__0__NAME", "reports"),
                ("HALFLIFE_POSTGRES_BACKENDS__0__ADMIN_URL", "postgres://admin@db/reports"),
                ("HALFLIFE_POSTGRES_BACKENDS__0__GRANTS", "[\"GRANT x TO {{role}}\"]"),
                ("HALFLIFE_TOKEN", "not a key"),
            ],
        )
        .unwrap();
        assert_eq!(config.issuers.len(), 2);
        assert_eq!((config.issuers[0].name.as_str(), config.issuers[0].audience.as_str()), ("k8s", "broker"));
        assert_eq!(config.issuers[1].name, "ci");
        assert_eq!(config.issuers[1].jwks_uri.as_ref().map(Url::as_str), Some("https://ci.example/jwks"));
        assert_eq!(config.postgres_backends[0].name, "reports");

        let err = with_vars(file, &[("HALFLIFE_ISSUERS__2__NAME", "gap")]).unwrap_err().to_string();
        assert!(err.contains("HALFLIFE_ISSUERS__2__NAME") && err.contains("has 1 entry"), "{err}");
        let nested = with_vars(
            "[mtls]\nlisten = \"127.0.0.1:8443\"\ncert_file = \"c\"\nkey_file = \"k\"\n",
            &[
                ("HALFLIFE_MTLS__TRUST_DOMAINS__0__NAME", "prod.example"),
                ("HALFLIFE_MTLS__TRUST_DOMAINS__0__BUNDLE_FILE", "b.pem"),
            ],
        )
        .unwrap();
        assert_eq!(nested.mtls.unwrap().trust_domains[0].name, "prod.example");
    }

    #[test]
    fn a_missing_config_file_is_an_error_unless_the_environment_is_chosen() {
        let missing = Config::load_unvalidated(Path::new("/nonexistent/halflife.toml")).unwrap_err().to_string();
        assert!(missing.contains("config file not found: /nonexistent/halflife.toml"), "{missing}");
        assert!(missing.contains("--config none"), "{missing}");
        let default = Config::load_unvalidated(Path::new("no-such-dir/halflife.toml")).unwrap_err().to_string();
        assert!(default.contains("config file not found"), "{default}");
        assert!(Config::load_unvalidated(Path::new(ENVIRONMENT_ONLY)).is_ok());
    }

    #[test]
    fn defaults_are_safe_and_valid_in_dev() {
        let config = Config::from_toml("[dev]\nenabled = true\n").unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.tokens.default_ttl.get(), Duration::from_secs(300));
        assert_eq!(config.tokens.max_ttl.get(), Duration::from_secs(3600));
        assert_eq!(config.server.public_base(), "http://127.0.0.1:8080");
    }

    #[test]
    fn dev_issuer_refused_on_public_listener() {
        let err =
            Config::from_toml("[server]\nlisten = \"0.0.0.0:8080\"\nallow_plain_http = true\n[dev]\nenabled = true\n")
                .unwrap_err();
        assert!(err.to_string().contains("dev.enabled"), "{err}");
    }

    #[test]
    fn plain_http_refused_on_public_listener() {
        let err = Config::from_toml("[server]\nlisten = \"0.0.0.0:8080\"\n[keys]\nkek = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
    }

    #[test]
    fn kek_required_outside_dev() {
        let err = Config::from_toml("").unwrap_err();
        assert!(err.to_string().contains("keys.kek_file"), "{err}");
    }

    #[test]
    fn issuer_rules_name_the_key() {
        let text = r#"
            [dev]
            enabled = true
            [[issuers]]
            name = "k8s"
            issuer = "https://k8s.example"
            jwks_uri = "http://k8s.example/jwks"
            audience = "*"
            leeway = "5m"
        "#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected invalid config");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"issuers[0].jwks_uri"), "{problems:?}");
        assert!(keys.contains(&"issuers[0].audience"), "{problems:?}");
        assert!(keys.contains(&"issuers[0].leeway"), "{problems:?}");
    }

    #[test]
    fn mtls_rules_name_the_key() {
        let text = r##"
            [dev]
            enabled = true
            [tokens]
            dpop_proof_window = "0s"
            [mtls]
            listen = "127.0.0.1:8443"
            public_url = "http://mtls.example"
            cert_file = "c.pem"
            key_file = "k.pem"
            [[mtls.trust_domains]]
            name = "Prod.Example"
            bundle_file = "a.pem"
            [[mtls.trust_domains]]
            name = "td"
            bundle_file = "b.pem"
            issuer = "dev"
            [[mtls.trust_domains]]
            name = "td"
            bundle_file = "c.pem"
            issuer = "#dpop"
        "##;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tokens.dpop_proof_window",
                "mtls.public_url",
                "mtls.trust_domains[0].name",
                "mtls.trust_domains[1].issuer",
                "mtls.trust_domains[2].name",
                "mtls.trust_domains[2].issuer",
            ],
            "{problems:?}"
        );
        let ok = Config::from_toml(
            "[dev]\nenabled = true\n[mtls]\nlisten = \"127.0.0.1:8443\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
             [[mtls.trust_domains]]\nname = \"prod.example\"\nbundle_file = \"b\"\n",
        )
        .unwrap();
        let mtls = ok.mtls.unwrap();
        assert_eq!(mtls.public_base(), "https://127.0.0.1:8443");
        assert_eq!(mtls.trust_domains[0].issuer_name(), "prod.example");
    }

    #[test]
    fn postgres_backend_rules_name_the_key() {
        let text = r#"
            [dev]
            enabled = true
            [[postgres_backends]]
            name = "Reports"
            admin_url = "postgres://admin:hunter2@db/reports"
            grants = ["GRANT SELECT ON reports.daily TO somebody"]
            role_prefix = "app_"
            max_ttl = "2h"
            [[postgres_backends]]
            name = "ok"
            admin_url = "postgres://admin@db"
            admin_password_file = "p"
            admin_password_env = "P"
        "#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "postgres_backends[0].name",
                "postgres_backends[0].admin_url",
                "postgres_backends[0].grants[0]",
                "postgres_backends[0].role_prefix",
                "postgres_backends[0].max_ttl",
                "postgres_backends[1].admin_url",
                "postgres_backends[1].admin_password_file",
            ],
            "{problems:?}"
        );
        assert!(!format!("{problems:?}").contains("hunter2"), "a password was echoed");
    }

    #[test]
    fn loopback_http_jwks_is_allowed() {
        let text = r#"
            [dev]
            enabled = true
            [[issuers]]
            name = "local"
            issuer = "http://127.0.0.1:9000"
            jwks_uri = "http://127.0.0.1:9000/jwks"
            audience = "halflife"
        "#;
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.issuers[0].leeway.get(), DEFAULT_LEEWAY);
        assert!(!config.issuers[0].single_use);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[dev]\nenabled = true\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn durations_parse_human_forms() {
        for (text, secs) in [("30s", 30), ("10m", 600), ("1h", 3600), ("90d", 90 * 86400)] {
            assert_eq!(text.parse::<HumanDuration>().unwrap().get().as_secs(), secs);
        }
        assert!("ten minutes".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn the_example_config_is_valid_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/halflife.example.toml");
        let config = Config::load(&path).unwrap();
        assert!(!config.dev.enabled && config.keys.kek_file.is_some());
        let text = std::fs::read_to_string(&path).unwrap();
        // Every leaf key of every section, by the name it has in the file.
        // A key added to the configuration must be added here and there.
        let keys = [
            "listen",
            "public_url",
            "allow_plain_http",
            "max_body_bytes",
            "request_timeout",
            "header_read_timeout",
            "max_connections",
            "max_connections_per_source",
            "shutdown_grace",
            "cert_file",
            "key_file",
            "bundle_refresh_interval",
            "name",
            "bundle_file",
            "issuer",
            "url",
            "busy_timeout",
            "auto_migrate",
            "sync_interval",
            "dir",
            "algorithm",
            "kek_file",
            "kek",
            "rotation_interval",
            "pre_publish",
            "default_ttl",
            "max_ttl",
            "dpop_proof_window",
            "max_delegation_depth",
            "per_workload_per_minute",
            "failures_per_source_per_minute",
            "enabled",
            "audience",
            "token_ttl",
            "apply",
            "tick",
            "notice_window",
            "recertify_every",
            "max_pilot",
            "webhook_url",
            "checkpoint_events",
            "checkpoint_interval",
            "jwks_uri",
            "jwks_file",
            "algorithms",
            "leeway",
            "max_token_age",
            "single_use",
            "single_audience",
            "jwks_refresh_interval",
            "jwks_refresh_cooldown",
            "jwks_max_stale",
            "admin_url",
            "admin_password_file",
            "admin_password_env",
            "grants",
            "connection_limit",
            "role_prefix",
            "connect_host",
            "connect_port",
        ];
        for key in keys {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
            });
            assert!(documented, "{key} is not in config/halflife.example.toml");
        }
        for section in SECTIONS {
            assert!(text.contains(&format!("[{section}]")) || text.contains(&format!("[[{section}]]")), "{section}");
        }
    }
}

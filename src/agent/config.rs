//! The agent's configuration: a TOML file with one `[agent]` table, plus
//! `HALFLIFE_AGENT__*` environment overrides (`HALFLIFE_AGENT__BROKER_URL`,
//! `HALFLIFE_AGENT__ATTESTATION__FILE`, …), in the broker's duration syntax.
//!
//! The file is read into loose types (almost every key optional, most
//! values text) and then checked as a whole, so one run names every
//! problem with its key path, the way `halflife config check` does; only
//! what passes becomes [`AgentSettings`], the typed form the agent runs on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use url::Url;

use super::schedule::{RenewPolicy, RetryPolicy};
use crate::config::{ConfigProblem, HumanDuration, is_loopback_host};
use crate::domain::values::{Audience, ScopeSet, is_backend_name};

/// Longest lifetime the agent asks for (the broker's own ceiling).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The file: `[agent]` and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    agent: Option<RawAgent>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    broker_url: Option<String>,
    broker_public_url: Option<String>,
    allow_plain_http: Option<bool>,
    ca_file: Option<PathBuf>,
    client_svid: Option<RawX509>,
    attestation: Option<RawAttestation>,
    #[serde(default)]
    credentials: Vec<RawCredential>,
    credentials_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    listen: Option<String>,
    renew_fraction: Option<f64>,
    renew_jitter: Option<f64>,
    retry_initial: Option<HumanDuration>,
    retry_max: Option<HumanDuration>,
    status_interval: Option<HumanDuration>,
    request_timeout: Option<HumanDuration>,
    exec: Option<RawExec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    file: Option<PathBuf>,
    x509: Option<RawX509>,
    command: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawX509 {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    name: Option<String>,
    audience: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
    kind: Option<String>,
    ttl: Option<HumanDuration>,
    binding: Option<String>,
    file: Option<RawFile>,
    api: Option<bool>,
}

/// `file = "path"`, or a table with the path and how to write it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawFile {
    Path(PathBuf),
    Table(RawFileTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileTable {
    path: Option<PathBuf>,
    format: Option<String>,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    renewal_signal: Option<String>,
}

/// The agent's settings, checked.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub broker: BrokerSettings,
    pub attestation: AttestationSource,
    pub credentials: Vec<CredentialSpec>,
    /// Exported to `exec` children as `HALFLIFE_CREDENTIALS_DIR`; relative
    /// credential file paths are taken from it.
    pub credentials_dir: Option<PathBuf>,
    pub api: ApiSettings,
    pub renewal: RenewPolicy,
    pub retry: RetryPolicy,
    pub status_interval: Duration,
    /// Sent to an `exec` child after each renewal.
    pub renewal_signal: Option<ChildSignal>,
}

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Where the agent sends its requests.
    pub url: Url,
    /// What DPoP proofs name as `htu` (the broker's own `public_url`).
    pub public_url: Url,
    /// Trusted CA certificates for an https broker; none: the platform's.
    pub ca_file: Option<PathBuf>,
    /// The client certificate presented to the broker (the x509
    /// attestation, or `client_svid`), re-read when its files change.
    pub identity: Option<X509Files>,
    pub request_timeout: Duration,
}

impl BrokerSettings {
    fn endpoint(base: &Url, path: &str) -> String {
        format!("{}{path}", base.as_str().trim_end_matches('/'))
    }
    pub fn token_url(&self) -> String {
        Self::endpoint(&self.url, "/oauth2/token")
    }
    pub fn status_url(&self) -> String {
        Self::endpoint(&self.url, "/oauth2/token-status")
    }
    pub fn token_htu(&self) -> String {
        Self::endpoint(&self.public_url, "/oauth2/token")
    }
    pub fn status_htu(&self) -> String {
        Self::endpoint(&self.public_url, "/oauth2/token-status")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Files {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationSource {
    /// A JWT read afresh for every exchange.
    File(PathBuf),
    /// The client certificate itself (`client_credentials` over mTLS).
    X509,
    /// A program whose standard output is the JWT.
    Command(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Jwt,
    Secret,
    PostgresLogin,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Secret => "secret",
            Self::PostgresLogin => "postgres-login",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CredentialSpec {
    pub name: String,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub kind: Kind,
    pub ttl: Option<Duration>,
    /// Bind the credential to a DPoP key only the agent holds.
    pub dpop: bool,
    pub file: Option<FileSink>,
    /// Served on the local API.
    pub api: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// The bare token (a login's password).
    Token,
    /// The whole answer: token, type, expiry, scope, and a login's
    /// username, password, host, port and database.
    Json,
}

#[derive(Debug, Clone)]
pub struct FileSink {
    pub path: PathBuf,
    pub format: FileFormat,
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub socket: Option<PathBuf>,
    pub socket_mode: u32,
    pub socket_group: Option<u32>,
    pub listen: Option<SocketAddr>,
}

/// Signals an `exec` child can be sent after a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildSignal {
    Hup,
    Int,
    Quit,
    Usr1,
    Usr2,
    Term,
    Winch,
    Alrm,
}

impl ChildSignal {
    const ALL: [(&'static str, Self); 8] = [
        ("HUP", Self::Hup),
        ("INT", Self::Int),
        ("QUIT", Self::Quit),
        ("USR1", Self::Usr1),
        ("USR2", Self::Usr2),
        ("TERM", Self::Term),
        ("WINCH", Self::Winch),
        ("ALRM", Self::Alrm),
    ];

    /// `SIGHUP`, `HUP` or `hup`.
    pub fn parse(text: &str) -> Option<Self> {
        let upper = text.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, s)| *s == self).map_or("?", |(n, _)| n)
    }
}

/// Why the configuration could not be used: it could not be read, or it
/// has these problems.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{} problem{}", .0.len(), if .0.len() == 1 { "" } else { "s" })]
    Invalid(Vec<ConfigProblem>),
}

impl AgentConfigError {
    /// Every problem, one per line, each with its key path.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Load(text) => text.lines().map(str::to_owned).collect(),
            Self::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Loads `path` plus `HALFLIFE_AGENT__*` overrides and checks it.
pub fn load(path: &Path) -> Result<AgentSettings, AgentConfigError> {
    if !path.exists() {
        return Err(AgentConfigError::Load(format!("{} does not exist", path.display())));
    }
    settle(Figment::new().merge(Toml::file(path)))
}

/// Parses TOML text plus the environment's overrides (for tests).
pub fn from_toml(text: &str) -> Result<AgentSettings, AgentConfigError> {
    settle(Figment::new().merge(Toml::string(text)))
}

fn settle(figment: Figment) -> Result<AgentSettings, AgentConfigError> {
    // Keys keep their case here (figment lowers them later): `AGENT.…`.
    let env = Env::prefixed("HALFLIFE_")
        .split("__")
        .filter(|key| key.as_str().get(..6).is_some_and(|head| head.eq_ignore_ascii_case("agent.")));
    let file: AgentFile =
        figment.merge(env).extract().map_err(|e| AgentConfigError::Load(crate::config::flatten_figment_error(e)))?;
    let raw = file.agent.ok_or_else(|| {
        AgentConfigError::Invalid(vec![ConfigProblem {
            key: "agent".into(),
            message: "missing: the agent's file holds one [agent] table".into(),
        }])
    })?;
    let mut problems = Problems(Vec::new());
    let settings = check(raw, &mut problems);
    match settings {
        Some(settings) if problems.0.is_empty() => Ok(settings),
        _ => Err(AgentConfigError::Invalid(problems.0)),
    }
}

struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ConfigProblem { key: key.to_owned(), message: message.into() });
    }
}

/// A file mode written in octal (`"0600"`): owner and group bits only,
/// since a credential readable by every user of the machine is no longer
/// the workload's.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode & !0o770 == 0 && mode & 0o600 == 0o600 => Ok(mode),
        Ok(_) => Err(format!(
            "{text:?} must give the owner read and write and nothing to other users or special bits (e.g. \"0600\" \
             or \"0640\")"
        )),
        Err(_) => Err(format!("{text:?} is not an octal mode like \"0600\"")),
    }
}

/// A user or group: a number, or a name looked up in `/etc/passwd` or
/// `/etc/group` (the third field of its line).
fn lookup_id(text: &str, table: &str) -> Result<u32, String> {
    if let Ok(id) = text.parse::<u32>() {
        return Ok(id);
    }
    let contents = std::fs::read_to_string(table).map_err(|e| format!("cannot read {table} to find {text:?}: {e}"))?;
    contents
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(text)).then(|| fields.nth(1).and_then(|id| id.parse().ok())).flatten()
        })
        .ok_or_else(|| format!("{text:?} is not a number and not in {table}"))
}

/// Checks a URL the agent talks to or names.
fn check_url(text: &str, allow_plain_http: bool) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("{text:?} must be an http(s) URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not carry a query, fragment or user"));
    }
    if url.scheme() == "http" && !is_loopback_host(&url) && !allow_plain_http {
        return Err(format!(
            "{text:?} is plain http on a non-loopback host: credentials would cross the network in clear text. \
             Use https, or set agent.allow_plain_http = true when something else encrypts the path (a mesh)"
        ));
    }
    Ok(url)
}

fn readable(path: &Path) -> Result<(), String> {
    std::fs::File::open(path).map(|_| ()).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn check_x509(raw: RawX509, key: &str, problems: &mut Problems) -> Option<X509Files> {
    let mut files = Vec::new();
    for (field, path) in [("cert_file", raw.cert_file), ("key_file", raw.key_file)] {
        match path {
            None => problems.add(&format!("{key}.{field}"), "missing: a PEM file"),
            Some(path) => {
                if let Err(e) = readable(&path) {
                    problems.add(&format!("{key}.{field}"), e);
                }
                files.push(path);
            }
        }
    }
    let [cert_file, key_file]: [PathBuf; 2] = files.try_into().ok()?;
    Some(X509Files { cert_file, key_file })
}

fn duration(
    value: Option<HumanDuration>,
    default: Duration,
    key: &str,
    range: (Duration, Duration),
    problems: &mut Problems,
) -> Duration {
    let d = value.map_or(default, HumanDuration::get);
    if d < range.0 || d > range.1 {
        problems.add(key, format!("must be between {} and {}", HumanDuration(range.0), HumanDuration(range.1)));
    }
    d
}

fn check(raw: RawAgent, problems: &mut Problems) -> Option<AgentSettings> {
    let plain = raw.allow_plain_http.unwrap_or(false);
    let url = match raw.broker_url.as_deref() {
        None => {
            problems.add("agent.broker_url", "missing: the broker's base URL, e.g. \"https://halflife.example\"");
            None
        }
        Some(text) => check_url(text, plain).map_err(|e| problems.add("agent.broker_url", e)).ok(),
    };
    let public_url = match raw.broker_public_url.as_deref() {
        None => url.clone(),
        Some(text) => check_url(text, true).map_err(|e| problems.add("agent.broker_public_url", e)).ok(),
    };
    let https = url.as_ref().is_some_and(|u| u.scheme() == "https");
    if let Some(path) = &raw.ca_file
        && let Err(e) = readable(path)
    {
        problems.add("agent.ca_file", e);
    }
    let client_svid = raw.client_svid.and_then(|x| check_x509(x, "agent.client_svid", problems));

    let mut identity = client_svid.clone();
    let attestation = match raw.attestation {
        None => {
            problems.add("agent.attestation", "missing: set one of file, x509 or command");
            None
        }
        Some(a) => {
            let set = [a.file.is_some(), a.x509.is_some(), a.command.is_some()].iter().filter(|s| **s).count();
            if set != 1 {
                problems.add("agent.attestation", "set exactly one of file, x509 or command");
            }
            if let Some(path) = a.file {
                if path.as_os_str().is_empty() {
                    problems.add("agent.attestation.file", "must name the attestation file");
                }
                Some(AttestationSource::File(path))
            } else if let Some(x509) = a.x509 {
                if client_svid.is_some() {
                    problems.add(
                        "agent.client_svid",
                        "the x509 attestation is the client certificate already; set one of them",
                    );
                }
                if url.is_some() && !https {
                    problems.add(
                        "agent.broker_url",
                        "an X.509-SVID attestation needs the broker's mTLS listener: an https URL",
                    );
                }
                identity = check_x509(x509, "agent.attestation.x509", problems);
                Some(AttestationSource::X509)
            } else if let Some(command) = a.command {
                if command.first().is_none_or(String::is_empty) {
                    problems.add("agent.attestation.command", "must name a program: [\"/path/to/program\", \"arg\"]");
                }
                Some(AttestationSource::Command(command))
            } else {
                None
            }
        }
    };
    if client_svid.is_some() && url.is_some() && !https {
        problems.add("agent.client_svid", "a client certificate needs an https broker_url (the mTLS listener)");
    }

    let credentials_dir = raw.credentials_dir.clone();
    if let Some(dir) = &credentials_dir
        && !dir.is_dir()
    {
        problems.add("agent.credentials_dir", format!("{} is not a directory", dir.display()));
    }

    let socket_mode = match raw.socket_mode.as_deref().map(parse_mode).transpose() {
        Ok(mode) => mode.unwrap_or(0o600),
        Err(e) => {
            problems.add("agent.socket_mode", e);
            0o600
        }
    };
    let socket_group = raw
        .socket_group
        .as_deref()
        .map(|g| lookup_id(g, "/etc/group"))
        .transpose()
        .map_err(|e| problems.add("agent.socket_group", e))
        .ok()
        .flatten();
    if let Some(socket) = &raw.socket {
        let parent = socket.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            problems.add("agent.socket", format!("its directory {} does not exist", parent.display()));
        }
    }
    let listen = match raw.listen.as_deref() {
        None => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Some(addr),
            Ok(addr) => {
                problems.add(
                    "agent.listen",
                    format!("{addr} is not a loopback address: the local API hands out credentials to whoever asks"),
                );
                None
            }
            Err(_) => {
                problems.add("agent.listen", format!("{text:?} is not an address like 127.0.0.1:8181"));
                None
            }
        },
    };
    let api_served = raw.socket.is_some() || listen.is_some();

    let defaults = RenewPolicy::default();
    let fraction = raw.renew_fraction.unwrap_or(defaults.fraction);
    let jitter = raw.renew_jitter.unwrap_or(defaults.jitter);
    if !(fraction > 0.0 && fraction < 1.0) {
        problems.add("agent.renew_fraction", "must be between 0 and 1 (exclusive), e.g. 0.6667");
    } else if !(0.0..0.5).contains(&jitter) || fraction - jitter <= 0.0 || fraction + jitter >= 1.0 {
        problems.add(
            "agent.renew_jitter",
            format!(
                "must be at least 0 and keep renew_fraction ± renew_jitter within (0, 1); renew_fraction is {fraction}"
            ),
        );
    }
    let retry_initial = duration(
        raw.retry_initial,
        RetryPolicy::default().initial,
        "agent.retry_initial",
        (Duration::from_millis(10), Duration::from_secs(600)),
        problems,
    );
    let retry_max = duration(
        raw.retry_max,
        RetryPolicy::default().max,
        "agent.retry_max",
        (Duration::from_millis(10), Duration::from_secs(3600)),
        problems,
    );
    if retry_initial > retry_max {
        problems.add("agent.retry_initial", format!("exceeds agent.retry_max ({})", HumanDuration(retry_max)));
    }
    let status_interval = duration(
        raw.status_interval,
        Duration::from_secs(30),
        "agent.status_interval",
        (Duration::from_millis(100), Duration::from_secs(3600)),
        problems,
    );
    let request_timeout = duration(
        raw.request_timeout,
        Duration::from_secs(10),
        "agent.request_timeout",
        (Duration::from_millis(100), Duration::from_secs(300)),
        problems,
    );
    let renewal_signal = match raw.exec.and_then(|e| e.renewal_signal) {
        None => None,
        Some(text) if text.eq_ignore_ascii_case("none") => None,
        Some(text) => {
            let signal = ChildSignal::parse(&text);
            if signal.is_none() {
                problems.add(
                    "agent.exec.renewal_signal",
                    format!("{text:?} is not one of none, HUP, INT, QUIT, USR1, USR2, TERM, WINCH, ALRM"),
                );
            }
            signal
        }
    };

    if raw.credentials.is_empty() {
        problems.add("agent.credentials", "list at least one [[agent.credentials]]");
    }
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    let mut credentials = Vec::new();
    for (i, c) in raw.credentials.into_iter().enumerate() {
        let key = |field: &str| format!("agent.credentials[{i}].{field}");
        let name = c.name.unwrap_or_default();
        let slug = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if !slug {
            problems.add(&key("name"), "must be 1-64 lower-case letters, digits, '-' or '_' (it names a URL path)");
        } else if !names.insert(name.clone()) {
            problems.add(&key("name"), format!("{name:?} is used twice"));
        }
        let kind = match c.kind.as_deref().unwrap_or("jwt") {
            "jwt" => Kind::Jwt,
            "secret" => Kind::Secret,
            "postgres-login" => Kind::PostgresLogin,
            other => {
                problems.add(&key("kind"), format!("{other:?} is not one of jwt, secret, postgres-login"));
                Kind::Jwt
            }
        };
        if let Some(audience) = &c.audience
            && let Err(e) = Audience::parse(audience)
        {
            problems.add(&key("audience"), e.0);
        }
        match (&c.resource, kind) {
            (Some(resource), Kind::PostgresLogin) => {
                if !resource.strip_prefix("postgres:").is_some_and(is_backend_name) {
                    problems.add(&key("resource"), format!("{resource:?} must be postgres:<backend>"));
                }
            }
            (None, Kind::PostgresLogin) => {
                problems.add(&key("resource"), "a postgres-login needs resource = \"postgres:<backend>\"")
            }
            (Some(_), _) => problems.add(
                &key("resource"),
                "only a postgres-login takes a resource (postgres:<backend>); name the audience instead",
            ),
            (None, _) => {}
        }
        if let Some(scope) = &c.scope
            && let Err(e) = ScopeSet::parse_space_separated(scope)
        {
            problems.add(&key("scope"), e.0);
        }
        let ttl = c.ttl.map(HumanDuration::get);
        if let Some(ttl) = ttl
            && (ttl < Duration::from_secs(1) || ttl > MAX_TTL || ttl.subsec_nanos() != 0)
        {
            problems.add(&key("ttl"), "must be whole seconds between 1s and 24h");
        }
        let dpop = match c.binding.as_deref() {
            None => false,
            Some("dpop") => true,
            Some(other) => {
                problems.add(&key("binding"), format!("{other:?} is not supported; the one binding is \"dpop\""));
                false
            }
        };
        if dpop && kind != Kind::Jwt {
            problems.add(&key("binding"), "only a jwt can be DPoP-bound (a secret or login is a bearer credential)");
        }
        let file = c.file.and_then(|f| {
            let table = match f {
                RawFile::Path(path) => {
                    RawFileTable { path: Some(path), format: None, mode: None, owner: None, group: None }
                }
                RawFile::Table(table) => table,
            };
            let Some(path) = table.path.filter(|p| !p.as_os_str().is_empty()) else {
                problems.add(&key("file.path"), "missing: where to write the credential");
                return None;
            };
            let path = match &credentials_dir {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path,
            };
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            // A missing credentials_dir is reported once, above.
            if credentials_dir.as_deref() != Some(parent) && !parent.is_dir() {
                problems.add(&key("file"), format!("its directory {} does not exist", parent.display()));
            }
            if path.file_name().is_none() {
                problems.add(&key("file"), format!("{} does not name a file", path.display()));
            }
            if !paths.insert(path.clone()) {
                problems.add(&key("file"), format!("{} is written by another credential too", path.display()));
            }
            let format = match table.format.as_deref().unwrap_or("token") {
                "token" => FileFormat::Token,
                "json" => FileFormat::Json,
                other => {
                    problems.add(&key("file.format"), format!("{other:?} is not one of token, json"));
                    FileFormat::Token
                }
            };
            let mode = match table.mode.as_deref().map(parse_mode).transpose() {
                Ok(mode) => mode.unwrap_or(0o600),
                Err(e) => {
                    problems.add(&key("file.mode"), e);
                    0o600
                }
            };
            let owner = table
                .owner
                .as_deref()
                .map(|o| lookup_id(o, "/etc/passwd"))
                .transpose()
                .map_err(|e| problems.add(&key("file.owner"), e))
                .ok()
                .flatten();
            let group = table
                .group
                .as_deref()
                .map(|g| lookup_id(g, "/etc/group"))
                .transpose()
                .map_err(|e| problems.add(&key("file.group"), e))
                .ok()
                .flatten();
            Some(FileSink { path, format, mode, owner, group })
        });
        let api = c.api.unwrap_or(true);
        if file.is_none() && !(api && api_served) {
            problems.add(
                &key("file"),
                "the credential goes nowhere: give it a file, or serve it on the local API (agent.socket or agent.listen)",
            );
        }
        credentials.push(CredentialSpec {
            name,
            audience: c.audience,
            resource: c.resource,
            scope: c.scope,
            kind,
            ttl,
            dpop,
            file,
            api,
        });
    }

    Some(AgentSettings {
        broker: BrokerSettings { url: url?, public_url: public_url?, ca_file: raw.ca_file, identity, request_timeout },
        attestation: attestation?,
        credentials,
        credentials_dir,
        api: ApiSettings { socket: raw.socket, socket_mode, socket_group, listen },
        renewal: RenewPolicy { fraction, jitter },
        retry: RetryPolicy { initial: retry_initial, max: retry_max },
        status_interval,
        renewal_signal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match from_toml(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        }
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[agent]\nbroker_url = \"http://127.0.0.1:8080\"\nattestation.file = \"/var/run/secrets/tokens/halflife\"\n\
             [[agent.credentials]]\nname = \"reports\"\naudience = \"reports-api\"\nfile = \"{}/reports\"\n",
            dir.path().display()
        );
        let settings = from_toml(&text).unwrap();
        assert!((settings.renewal.fraction - 2.0 / 3.0).abs() < 0.001);
        assert_eq!(settings.status_interval, Duration::from_secs(30));
        assert_eq!(settings.broker.token_url(), "http://127.0.0.1:8080/oauth2/token");
        assert_eq!(settings.broker.status_htu(), "http://127.0.0.1:8080/oauth2/token-status");
        let c = &settings.credentials[0];
        assert_eq!((c.kind, c.dpop, c.api), (Kind::Jwt, false, true));
        let file = c.file.as_ref().unwrap();
        assert_eq!((file.mode, file.format), (0o600, FileFormat::Token));
        assert!(settings.renewal_signal.is_none());
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let text = r#"
            [agent]
            broker_url = "http://broker.example:8080"
            listen = "0.0.0.0:9000"
            socket_mode = "0666"
            renew_fraction = 0.95
            renew_jitter = 0.1
            retry_initial = "5m"
            retry_max = "1m"
            status_interval = "10ms"
            exec.renewal_signal = "KILL"
            [agent.attestation]
            file = "/a"
            command = ["/b"]
            [[agent.credentials]]
            name = "Reports"
            kind = "jwt"
            resource = "postgres:reports"
            ttl = "90000s"
            binding = "mtls"
            [[agent.credentials]]
            name = "db"
            kind = "postgres-login"
            binding = "dpop"
            file = { path = "/nonexistent-dir/db", format = "yaml", mode = "0644" }
        "#;
        let found = problems(text);
        let keys: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "agent.broker_url",
                "agent.attestation",
                "agent.socket_mode",
                "agent.listen",
                "agent.renew_jitter",
                "agent.retry_initial",
                "agent.status_interval",
                "agent.exec.renewal_signal",
                "agent.credentials[0].name",
                "agent.credentials[0].resource",
                "agent.credentials[0].ttl",
                "agent.credentials[0].binding",
                "agent.credentials[0].file",
                "agent.credentials[1].resource",
                "agent.credentials[1].binding",
                "agent.credentials[1].file",
                "agent.credentials[1].file.format",
                "agent.credentials[1].file.mode",
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn type_errors_name_their_key() {
        let found = problems("[agent]\nstatus_interval = \"soon\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("agent.status_interval: "), "{found:?}");
        let found = problems("[agent]\nbogus = 1\n");
        assert!(found[0].contains("bogus"), "{found:?}");
        let found = problems("[server]\nlisten = \"127.0.0.1:1\"\n");
        assert!(found[0].contains("server"), "{found:?}");
        assert_eq!(problems("")[0], "agent: missing: the agent's file holds one [agent] table");
    }

    /// Problems that only say a path of a deployment is absent here.
    fn only_missing_paths(problems: &[String]) -> bool {
        problems.iter().all(|p| p.contains("does not exist") || p.contains("is not a directory"))
    }

    #[test]
    fn the_example_files_are_valid_and_the_reference_documents_every_key() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["config/agent.example.toml", "config/agent.toml"] {
            let problems = match load(&root.join(file)) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems(),
            };
            assert!(only_missing_paths(&problems), "{file}: {problems:#?}");
        }
        let text = std::fs::read_to_string(root.join("config/agent.example.toml")).unwrap();
        // Every key of the [agent] table, by its name in the file. A key
        // added to RawAgent and its parts must be added here and there.
        let keys = [
            "broker_url",
            "broker_public_url",
            "allow_plain_http",
            "ca_file",
            "client_svid",
            "cert_file",
            "key_file",
            "credentials_dir",
            "socket",
            "socket_mode",
            "socket_group",
            "listen",
            "renew_fraction",
            "renew_jitter",
            "retry_initial",
            "retry_max",
            "status_interval",
            "request_timeout",
            "renewal_signal",
            "file",
            "x509",
            "command",
            "name",
            "audience",
            "resource",
            "scope",
            "kind",
            "ttl",
            "binding",
            "api",
            "path",
            "format",
            "mode",
            "owner",
            "group",
        ];
        for key in keys {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} ="))
                    || l.contains(&format!("{{ {key} ="))
                    || l.contains(&format!(", {key} ="))
            });
            assert!(documented, "{key} is not in config/agent.example.toml");
        }
        for table in ["[agent]", "[agent.attestation]", "[[agent.credentials]]", "[agent.exec]"] {
            assert!(text.contains(table), "{table}");
        }
    }

    #[test]
    fn modes_keep_other_users_out() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("0o660"), Ok(0o660));
        for bad in ["0644", "0604", "4600", "0400", "0200", "rw", "0800"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals_parse_in_every_spelling() {
        assert_eq!(ChildSignal::parse("SIGHUP"), Some(ChildSignal::Hup));
        assert_eq!(ChildSignal::parse("usr1"), Some(ChildSignal::Usr1));
        assert_eq!(ChildSignal::parse("KILL"), None);
        assert_eq!(ChildSignal::Usr2.name(), "USR2");
    }
}

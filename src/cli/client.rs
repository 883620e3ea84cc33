//! CLI commands that talk to a running server's `/v1/` API: `systems`,
//! `owners`, `grants`, `revoke`, `jobs`, `sessions`, `whoami`. Authenticated
//! with the token in `HALFLIFE_TOKEN` (never a command-line argument, which
//! other users could read from the process list), else with the session
//! `halflife login` stored.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::clock::{Clock, SystemClock};

#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Base URL of the halflife server [default: server.public_url of --config, else its listen
    /// address].
    #[arg(long, env = "HALFLIFE_URL", global = true)]
    pub server: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Remote {
    /// This remote with its server decided: `--server`, else `HALFLIFE_URL`,
    /// else the deprecated `HALFLIFE_SERVER` (with a warning), else (without
    /// `HALFLIFE_TOKEN`) the server of the stored session, else the server
    /// the configuration at `config` describes (its `public_url`, or its
    /// listen address).
    pub fn resolved(&self, config: &std::path::Path) -> anyhow::Result<Remote> {
        if self.server.is_some() {
            return Ok(self.clone());
        }
        if let Ok(old) = std::env::var("HALFLIFE_SERVER") {
            eprintln!("warning: HALFLIFE_SERVER is deprecated; set HALFLIFE_URL instead");
            return Ok(Remote { server: Some(old), ..self.clone() });
        }
        // A stored session that cannot be read is reported by the command
        // that needs it (`Client::new`), not here.
        if std::env::var_os("HALFLIFE_TOKEN").is_none()
            && let Ok(Some(session)) = super::session::load()
        {
            return Ok(Remote { server: Some(session.server), ..self.clone() });
        }
        let configured = crate::config::Config::load_unvalidated(config).map_err(|e| {
            anyhow::anyhow!(
                "no server to talk to: set --server or HALFLIFE_URL, or name a configuration with --config ({e})"
            )
        })?;
        let mut server = configured.server.clone();
        // A wildcard listener is reached on loopback from this host.
        if server.public_url.is_none() && server.listen.ip().is_unspecified() {
            server.listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Remote { server: Some(server.public_base()), ..self.clone() })
    }
}

#[derive(Debug, Subcommand)]
pub enum SystemsCommand {
    /// List systems.
    List,
    /// Show one system.
    Show { id: String },
    /// Register a system (sandbox or pilot; production is reached by promotion).
    Create(CreateSystem),
    /// Change a system's name, purpose, owners, end date or data classification.
    Update(UpdateSystem),
    /// Promote one tier (sandbox → pilot → production) through its gate.
    Promote {
        id: String,
        /// End date when promoting a sandbox to pilot (RFC 3339 or a duration like 30d).
        #[arg(long)]
        pilot_ends_at: Option<String>,
    },
    /// Suspend a system and revoke everything it holds.
    Suspend {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Reinstate a suspended or retired system (pilots need a new end date; one beyond the pilot's
    /// lifecycle.max_pilot allowance starts a new period and needs --reason).
    Reinstate {
        id: String,
        #[arg(long)]
        pilot_ends_at: Option<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Retire a system and revoke everything it holds.
    Retire {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Revoke every credential a system holds, without suspending it.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Outstanding credentials of a system (never the tokens themselves).
    Credentials { id: String },
    /// Pilot ends and owner attestations due within the notice window.
    Expiring,
}

#[derive(Debug, Args)]
pub struct CreateSystem {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub purpose: String,
    #[arg(long)]
    pub business_owner: String,
    #[arg(long)]
    pub technical_owner: String,
    /// sandbox or pilot.
    #[arg(long, default_value = "sandbox")]
    pub tier: String,
    /// RFC 3339 time or a duration from now such as 30d.
    #[arg(long)]
    pub pilot_ends_at: Option<String>,
    #[arg(long)]
    pub data_classification: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateSystem {
    pub id: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub purpose: Option<String>,
    #[arg(long)]
    pub business_owner: Option<String>,
    #[arg(long)]
    pub technical_owner: Option<String>,
    #[arg(long)]
    pub pilot_ends_at: Option<String>,
    #[arg(long)]
    pub data_classification: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OwnersCommand {
    /// List owners.
    List,
    /// Show one owner.
    Show { id: String },
    /// Register an owner (attested for lifecycle.recertify_every from now).
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        email: String,
    },
    /// The owner re-attests ownership for another period.
    Recertify { id: String },
    /// Mark the owner departed: their systems stop operating.
    Depart {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke every credential of every system the owner owns.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List a system's grants.
    List { system: String },
    /// Add a grant to a system.
    Add(Box<AddGrant>),
    /// Delete a grant.
    Delete { system: String, grant: String },
}

#[derive(Debug, Args)]
pub struct AddGrant {
    pub system: String,
    #[arg(long)]
    pub id: String,
    /// Trusted issuer name from the server's config (or "dev").
    #[arg(long)]
    pub issuer: String,
    /// Exact workload identity, or a path prefix ending in /*.
    #[arg(long)]
    pub subject: String,
    /// Allowed audience (repeat for several).
    #[arg(long = "audience", required = true)]
    pub audiences: Vec<String>,
    /// Allowed scope (repeat for several).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Scope granted when a request names none (repeat for several).
    #[arg(long = "default-scope")]
    pub default_scopes: Vec<String>,
    /// Credential kind (repeat for several; default jwt).
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// Longest credential lifetime, e.g. 15m.
    #[arg(long)]
    pub max_ttl: String,
    /// Sender-constraint: optional (default), required, dpop or mtls.
    #[arg(long)]
    pub binding: Option<String>,
    /// Most targets (audiences, resources) one token may name (default 1).
    #[arg(long)]
    pub max_audiences: Option<u32>,
    /// Delegation: a subject the workload may act for, as ISSUER:SUBJECT
    /// (`corp-idp:*`, `halflife:*` for halflife tokens passed on); repeat
    /// for several. Claim requirements are set in the catalog file.
    #[arg(long = "on-behalf-of", value_name = "ISSUER:SUBJECT")]
    pub on_behalf_of: Vec<String>,
    /// none (default) or required: every exchange waits for a person's approval.
    #[arg(long)]
    pub approval: Option<String>,
    /// Who may approve: a group or an email address; repeat for several (default: anyone with the
    /// approver role).
    #[arg(long = "approver", value_name = "GROUP_OR_EMAIL")]
    pub approvers: Vec<String>,
    /// The longest approval, e.g. 1h (the default).
    #[arg(long)]
    pub approval_max_duration: Option<String>,
    /// Let an owner of the system approve.
    #[arg(long)]
    pub allow_owner_approval: bool,
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Access requests, newest first.
    List {
        /// pending (default), approved, denied, expired, revoked or all.
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Show one access request.
    Show { id: String },
    /// Approve a pending request for a while.
    Approve {
        id: String,
        /// How long, e.g. 30m (default and most: the grant's approval_max_duration).
        #[arg(long)]
        duration: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// An operator approving what they may not otherwise (their own system): needs --reason,
        /// is announced at once and awaits a second person's review.
        #[arg(long)]
        break_glass: bool,
    },
    /// Deny a pending request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Take an approval back; the credentials issued under it are revoked.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReviewsCommand {
    /// Break-glass approvals awaiting a second person's review.
    List,
    /// Mark a break-glass approval reviewed (not by the person who approved it).
    Done {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Revoke every credential of this identity (its subject; a workload, or a
    /// person agents act for); needs --issuer.
    #[arg(long, requires = "issuer", conflicts_with = "jti")]
    pub workload: Option<String>,
    /// The trusted issuer name of --workload.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Revoke one credential by its jti.
    #[arg(long, required_unless_present = "workload")]
    pub jti: Option<String>,
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Queued background work; failing jobs show their last error.
    List {
        /// Include finished jobs.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// People's sessions: who signed in, with which roles, until when.
    List,
    /// End a session at once (`current` is the caller's own).
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Every signing key: pending, signing, verifying or retired, and when.
    List,
    /// Publish the next key now; it signs after the pre-publish time (admin).
    Rotate {
        /// How long the new key is published before it signs (default: keys.pre_publish).
        #[arg(long)]
        pre_publish: Option<String>,
    },
    /// Withdraw a key from the JWKS; tokens it signed stop verifying (admin).
    Retire {
        /// A key id: base64url, so it may begin with `-`.
        #[arg(allow_hyphen_values = true)]
        kid: String,
        /// Retire even though tokens it signed may still be valid.
        #[arg(long)]
        force: bool,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    json: bool,
}

impl Client {
    /// A client for `remote`'s server with `HALFLIFE_TOKEN`, else the stored
    /// session's token.
    fn new(remote: &Remote) -> anyhow::Result<Self> {
        let base = remote.server.as_deref().context("no server to talk to: set --server or HALFLIFE_URL")?;
        let base = base.trim_end_matches('/').to_owned();
        let token = match std::env::var("HALFLIFE_TOKEN") {
            Ok(token) => SecretString::from(token),
            Err(_) => session_token(&base)?,
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(client_tls()?)
            .timeout(Duration::from_secs(30))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self { http, base, token, json: remote.json })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.token.expose_secret());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status();
        let text = response.text().await.context("failed to read the response")?;
        let value: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if !status.is_success() {
            let description =
                value.get("error_description").and_then(Value::as_str).map_or_else(|| value.to_string(), str::to_owned);
            let failed = value
                .get("failed_checks")
                .or_else(|| value.get("problems"))
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(Value::as_str).map(|s| format!("\n  - {s}")).collect::<String>())
                .unwrap_or_default();
            bail!("{} ({status}){failed}", description);
        }
        Ok(value)
    }

    /// Starts a streamed GET; errors as in `call`.
    async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if !response.status().is_success() {
            let status = response.status();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            bail!("{} ({status})", value.get("error_description").and_then(Value::as_str).unwrap_or("request failed"));
        }
        Ok(response)
    }

    fn print(&self, value: &Value, table: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            table(value);
        }
    }
}

/// The stored session's token, if it is for `base` and still valid.
fn session_token(base: &str) -> anyhow::Result<SecretString> {
    let Some(session) = super::session::load()? else {
        bail!(
            "not signed in: run halflife login to sign in with your organisation's identity provider, or set \
             HALFLIFE_TOKEN to an admin or automation token whose role may do this (halflife admin token create \
             --role auditor --name <you> to read and verify; --role operator to change)"
        );
    };
    if session.expires_at <= SystemClock.now() {
        bail!("your session expired at {}; run halflife login", session.expiry());
    }
    // The token goes only to the server that issued it.
    if session.server.trim_end_matches('/') != base {
        bail!(
            "the stored session is for {}, not {base}: run halflife login --server {base}, or set HALFLIFE_TOKEN",
            session.server
        );
    }
    Ok(session.token)
}

/// TLS for the CLI: rustls on ring with the platform's trust store.
pub(super) fn client_tls() -> anyhow::Result<rustls::ClientConfig> {
    use rustls_platform_verifier::BuilderVerifierExt;
    Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth())
}

/// Accepts RFC 3339, or a duration from now (`30d`) converted to RFC 3339.
fn when(text: &str) -> anyhow::Result<String> {
    if OffsetDateTime::parse(text, &Rfc3339).is_ok() {
        return Ok(text.to_owned());
    }
    let d = humantime::parse_duration(text)
        .with_context(|| format!("{text:?} is neither an RFC 3339 time nor a duration such as 30d"))?;
    Ok(crate::domain::rfc3339(SystemClock.now() + d))
}

fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join(" ")
        }
        Some(other) => other.to_string(),
    }
}

/// Prints rows of `items` as an aligned table of `columns`.
fn table(items: &[Value], columns: &[&str]) {
    let rows: Vec<Vec<String>> = items.iter().map(|i| columns.iter().map(|c| cell(i, c)).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(n, c)| rows.iter().map(|r| r[n].chars().count()).max().unwrap_or(0).max(c.len()))
        .collect();
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn record(value: &Value) {
    if let Some(map) = value.as_object() {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{k:<width$}  {text}");
        }
    }
}

const SYSTEM_COLUMNS: &[&str] = &["id", "tier", "state", "business_owner", "technical_owner", "pilot_ends_at", "name"];
const OWNER_COLUMNS: &[&str] = &["id", "status", "attested_until", "email", "display_name"];
const GRANT_COLUMNS: &[&str] = &["id", "issuer", "subject", "audiences", "scopes", "max_ttl", "binding"];

fn path_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Prints what an apply did (or would do).
pub fn print_apply_report(report: &Value, dry_run: bool) {
    let verb = if dry_run { "would be " } else { "" };
    let items = |key: &str| report.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    for (key, label) in [("created", "created "), ("updated", "updated "), ("suspended", "suspended")] {
        for item in items(key) {
            println!("{verb}{label} {}", item.as_str().unwrap_or_default());
        }
    }
    println!(
        "{} created, {} updated, {} unchanged, {} suspended{}",
        items("created").len(),
        items("updated").len(),
        items("unchanged").len(),
        items("suspended").len(),
        if dry_run { " (dry run: nothing changed)" } else { "" }
    );
}

/// `halflife apply -f <file>` through the server (`POST /v1/catalog`):
/// the file is checked for its shape here and for everything else by the
/// server, which records the change under the caller's token.
pub async fn apply(remote: &Remote, file: &std::path::Path, dry_run: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("failed to read {}", file.display()))?;
    let parsed = crate::broker::apply::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let client = Client::new(remote)?;
    let path = if dry_run { "/v1/catalog?dry_run=true" } else { "/v1/catalog" };
    let report = client
        .call(Method::POST, path, Some(serde_json::to_value(&parsed)?))
        .await
        .with_context(|| format!("{} was not applied", file.display()))?;
    client.print(&report, |r| print_apply_report(r, dry_run));
    Ok(())
}

pub async fn systems(remote: &Remote, command: SystemsCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    match command {
        SystemsCommand::List => {
            let v = c.call(Method::GET, "/v1/systems", None).await?;
            c.print(&v, |v| table(list(v, "systems"), SYSTEM_COLUMNS));
        }
        SystemsCommand::Show { id } => {
            let v = c.call(Method::GET, &format!("/v1/systems/{}", path_segment(&id)), None).await?;
            c.print(&v, record);
        }
        SystemsCommand::Create(a) => {
            let body = json!({
                "id": a.id, "name": a.name, "purpose": a.purpose, "business_owner": a.business_owner,
                "technical_owner": a.technical_owner, "tier": a.tier,
                "pilot_ends_at": a.pilot_ends_at.as_deref().map(when).transpose()?,
                "data_classification": a.data_classification,
            });
            let v = c.call(Method::POST, "/v1/systems", Some(body)).await?;
            c.print(&v, record);
        }
        SystemsCommand::Update(a) => {
            let mut body = serde_json::Map::new();
            for (k, v) in [
                ("name", a.name),
                ("purpose", a.purpose),
                ("business_owner", a.business_owner),
                ("technical_owner", a.technical_owner),
                ("pilot_ends_at", a.pilot_ends_at.as_deref().map(when).transpose()?),
                ("data_classification", a.data_classification),
            ] {
                if let Some(v) = v {
                    body.insert(k.into(), Value::String(v));
                }
            }
            let v = c
                .call(Method::PATCH, &format!("/v1/systems/{}", path_segment(&a.id)), Some(Value::Object(body)))
                .await?;
            c.print(&v, record);
        }
        SystemsCommand::Promote { id, pilot_ends_at } => {
            let body = json!({"pilot_ends_at": pilot_ends_at.as_deref().map(when).transpose()?});
            let v = c.call(Method::POST, &format!("/v1/systems/{}/promote", path_segment(&id)), Some(body)).await?;
            c.print(&v, |v| {
                println!("{} is now {}", cell(&v["system"], "id"), cell(&v["system"], "tier"));
                for check in list(v, "gate") {
                    println!("  passed  {}: {}", cell(check, "check"), cell(check, "detail"));
                }
            });
        }
        SystemsCommand::Suspend { id, reason } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/systems/{}/suspend", path_segment(&id)),
                    Some(json!({"reason": reason})),
                )
                .await?;
            c.print(&v, |v| println!("{id} suspended; {} credential(s) revoked", cell(v, "revoked")));
        }
        SystemsCommand::Retire { id, reason } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/systems/{}/retire", path_segment(&id)),
                    Some(json!({"reason": reason})),
                )
                .await?;
            c.print(&v, |v| println!("{id} retired; {} credential(s) revoked", cell(v, "revoked")));
        }
        SystemsCommand::Reinstate { id, pilot_ends_at, reason } => {
            let body = json!({"pilot_ends_at": pilot_ends_at.as_deref().map(when).transpose()?, "reason": reason});
            let v = c.call(Method::POST, &format!("/v1/systems/{}/reinstate", path_segment(&id)), Some(body)).await?;
            c.print(&v, |v| println!("{} reinstated ({})", cell(v, "id"), cell(v, "state")));
        }
        SystemsCommand::Revoke { id, reason } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/systems/{}/revoke", path_segment(&id)),
                    Some(json!({"reason": reason})),
                )
                .await?;
            c.print(&v, |v| println!("{} credential(s) revoked", cell(v, "revoked")));
        }
        SystemsCommand::Credentials { id } => {
            let v = c.call(Method::GET, &format!("/v1/systems/{}/credentials", path_segment(&id)), None).await?;
            c.print(&v, |v| table(list(v, "credentials"), &["jti", "subject", "audience", "scopes", "exp"]));
        }
        SystemsCommand::Expiring => {
            let v = c.call(Method::GET, "/v1/expiring", None).await?;
            c.print(&v, |v| {
                table(list(v, "deadlines"), &["due_at", "kind", "subject_id", "systems", "message"]);
                println!();
                println!("Notices recorded:");
                table(list(v, "notices"), &["created_at", "kind", "subject_id", "due_at", "message"]);
            });
        }
    }
    Ok(())
}

pub async fn owners(remote: &Remote, command: OwnersCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    match command {
        OwnersCommand::List => {
            let v = c.call(Method::GET, "/v1/owners", None).await?;
            c.print(&v, |v| table(list(v, "owners"), OWNER_COLUMNS));
        }
        OwnersCommand::Show { id } => {
            let v = c.call(Method::GET, &format!("/v1/owners/{}", path_segment(&id)), None).await?;
            c.print(&v, record);
        }
        OwnersCommand::Create { id, display_name, email } => {
            let body = json!({"id": id, "display_name": display_name, "email": email});
            let v = c.call(Method::POST, "/v1/owners", Some(body)).await?;
            c.print(&v, record);
        }
        OwnersCommand::Recertify { id } => {
            let v =
                c.call(Method::POST, &format!("/v1/owners/{}/recertify", path_segment(&id)), Some(json!({}))).await?;
            c.print(&v, |v| println!("{} attested until {}", cell(v, "id"), cell(v, "attested_until")));
        }
        OwnersCommand::Depart { id, reason } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/owners/{}/depart", path_segment(&id)),
                    Some(json!({"reason": reason})),
                )
                .await?;
            c.print(&v, |v| println!("{} departed; their systems no longer operate", cell(v, "id")));
        }
        OwnersCommand::Revoke { id, reason } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/owners/{}/revoke", path_segment(&id)),
                    Some(json!({"reason": reason})),
                )
                .await?;
            c.print(&v, |v| println!("{} credential(s) revoked across {}", cell(v, "revoked"), cell(v, "systems")));
        }
    }
    Ok(())
}

/// `--on-behalf-of ISSUER:SUBJECT` values as `on_behalf_of` entries, one
/// per issuer with its subjects in order.
fn on_behalf_of(values: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    for value in values {
        let Some((issuer, subject)) = value.split_once(':').filter(|(i, s)| !i.is_empty() && !s.is_empty()) else {
            bail!("--on-behalf-of {value:?}: write ISSUER:SUBJECT, such as corp-idp:* or halflife:*");
        };
        match entries.iter_mut().find(|(i, _)| i == issuer) {
            Some((_, subjects)) => subjects.push(subject.to_owned()),
            None => entries.push((issuer.to_owned(), vec![subject.to_owned()])),
        }
    }
    Ok(serde_json::Value::Array(
        entries.into_iter().map(|(issuer, subjects)| json!({"issuer": issuer, "subjects": subjects})).collect(),
    ))
}

pub async fn grants(remote: &Remote, command: GrantsCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    match command {
        GrantsCommand::List { system } => {
            let v = c.call(Method::GET, &format!("/v1/systems/{}/grants", path_segment(&system)), None).await?;
            c.print(&v, |v| table(list(v, "grants"), GRANT_COLUMNS));
        }
        GrantsCommand::Add(a) => {
            let mut body = json!({
                "id": a.id, "issuer": a.issuer, "subject": a.subject, "audiences": a.audiences,
                "scopes": a.scopes, "default_scopes": a.default_scopes, "max_ttl": a.max_ttl,
            });
            if !a.kinds.is_empty() {
                body["kinds"] = json!(a.kinds);
            }
            if let Some(n) = a.max_audiences {
                body["max_audiences"] = json!(n);
            }
            if !a.on_behalf_of.is_empty() {
                body["on_behalf_of"] = on_behalf_of(&a.on_behalf_of)?;
            }
            if let Some(binding) = a.binding {
                body["binding"] = json!(binding);
            }
            if let Some(approval) = a.approval {
                body["approval"] = json!(approval);
            }
            if !a.approvers.is_empty() {
                body["approvers"] = json!(a.approvers);
            }
            if let Some(max) = a.approval_max_duration {
                body["approval_max_duration"] = json!(max);
            }
            if a.allow_owner_approval {
                body["allow_owner_approval"] = json!(true);
            }
            let v =
                c.call(Method::POST, &format!("/v1/systems/{}/grants", path_segment(&a.system)), Some(body)).await?;
            c.print(&v, record);
        }
        GrantsCommand::Delete { system, grant } => {
            let v = c
                .call(
                    Method::DELETE,
                    &format!("/v1/systems/{}/grants/{}", path_segment(&system), path_segment(&grant)),
                    None,
                )
                .await?;
            c.print(&v, |v| {
                println!("grant {grant} deleted; {} credential(s) issued under it revoked", cell(v, "revoked"))
            });
        }
    }
    Ok(())
}

pub async fn revoke(remote: &Remote, args: RevokeArgs) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let body = match (args.jti, args.workload, args.issuer) {
        (Some(jti), None, _) => json!({"jti": jti, "reason": args.reason}),
        (None, Some(subject), Some(issuer)) => {
            json!({"issuer": issuer, "subject": subject, "reason": args.reason})
        }
        _ => bail!("give --jti, or --workload with --issuer"),
    };
    let v = c.call(Method::POST, "/v1/revoke", Some(body)).await?;
    c.print(&v, |v| println!("{} credential(s) revoked", cell(v, "revoked")));
    Ok(())
}

pub async fn jobs(remote: &Remote, command: JobsCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let JobsCommand::List { all } = command;
    let v = c.call(Method::GET, &format!("/v1/jobs?all={all}"), None).await?;
    c.print(&v, |v| table(list(v, "jobs"), &["id", "kind", "status", "attempts", "next_attempt_at", "last_error"]));
    Ok(())
}

pub async fn sessions(remote: &Remote, command: SessionsCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    match command {
        SessionsCommand::List => {
            let v = c.call(Method::GET, "/v1/sessions", None).await?;
            c.print(&v, |v| {
                table(list(v, "sessions"), &["id", "email", "subject", "roles", "created_at", "expires_at", "issuer"])
            });
        }
        SessionsCommand::Revoke { id } => {
            let v = c.call(Method::POST, &format!("/v1/sessions/{}/revoke", path_segment(&id)), None).await?;
            c.print(&v, |v| println!("session {} is revoked", cell(v, "id")));
        }
    }
    Ok(())
}

const REQUEST_COLUMNS: [&str; 8] =
    ["id", "state", "system_id", "grant_id", "subject", "created_at", "approved_until", "decided_by"];

pub async fn requests(remote: &Remote, command: RequestsCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let decide = |id: &str, verb: &str| format!("/v1/access-requests/{}/{verb}", path_segment(id));
    let v = match command {
        RequestsCommand::List { state } => {
            let query = if state == "all" { String::new() } else { format!("?state={}", path_segment(&state)) };
            let v = c.call(Method::GET, &format!("/v1/access-requests{query}"), None).await?;
            c.print(&v, |v| table(list(v, "access_requests"), &REQUEST_COLUMNS));
            return Ok(());
        }
        RequestsCommand::Show { id } => {
            c.call(Method::GET, &format!("/v1/access-requests/{}", path_segment(&id)), None).await?
        }
        RequestsCommand::Approve { id, duration, reason, break_glass } => {
            let body = json!({"duration": duration, "reason": reason, "break_glass": break_glass});
            c.call(Method::POST, &decide(&id, "approve"), Some(body)).await?
        }
        RequestsCommand::Deny { id, reason } => {
            c.call(Method::POST, &decide(&id, "deny"), Some(json!({"reason": reason}))).await?
        }
        RequestsCommand::Revoke { id, reason } => {
            c.call(Method::POST, &decide(&id, "revoke"), Some(json!({"reason": reason}))).await?
        }
    };
    c.print(&v, record);
    Ok(())
}

pub async fn reviews(remote: &Remote, command: ReviewsCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    match command {
        ReviewsCommand::List => {
            let v = c.call(Method::GET, "/v1/reviews", None).await?;
            c.print(&v, |v| table(list(v, "reviews"), &REQUEST_COLUMNS));
        }
        ReviewsCommand::Done { id, note } => {
            let path = format!("/v1/reviews/{}/done", path_segment(&id));
            let v = c.call(Method::POST, &path, Some(json!({"note": note}))).await?;
            c.print(&v, record);
        }
    }
    Ok(())
}

/// `halflife whoami`: whom the server takes the caller for.
pub async fn whoami(remote: &Remote) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let v = c.call(Method::GET, "/v1/whoami", None).await?;
    c.print(&v, record);
    Ok(())
}

pub async fn keys(remote: &Remote, command: KeysCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let columns = ["kid", "alg", "state", "activates_at", "superseded_at", "retire_at"];
    match command {
        KeysCommand::List => {
            let v = c.call(Method::GET, "/v1/keys", None).await?;
            c.print(&v, |v| table(list(v, "keys"), &columns));
        }
        KeysCommand::Rotate { pre_publish } => {
            let body = pre_publish.map_or_else(|| json!({}), |p| json!({"pre_publish": p}));
            let v = c.call(Method::POST, "/v1/keys/rotate", Some(body)).await?;
            c.print(&v, |v| {
                println!(
                    "key {} is published and signs from {}",
                    cell(&v["key"], "kid"),
                    cell(&v["key"], "activates_at")
                )
            });
        }
        KeysCommand::Retire { kid, force } => {
            let path =
                format!("/v1/keys/{}/retire", form_urlencoded::byte_serialize(kid.as_bytes()).collect::<String>());
            let v = c.call(Method::POST, &path, Some(json!({"force": force}))).await?;
            c.print(&v, |v| println!("key {} is retired", cell(&v["key"], "kid")));
        }
    }
    Ok(())
}

#[derive(Debug, Args, Default)]
pub struct AuditFilterArgs {
    #[arg(long)]
    pub system: Option<String>,
    /// Events whose system had this owner at the time.
    #[arg(long)]
    pub owner: Option<String>,
    /// Workload subject: its own events, and those of credentials issued on
    /// its behalf.
    #[arg(long)]
    pub workload: Option<String>,
    /// The acting workload's subject (a delegation's actor).
    #[arg(long)]
    pub actor: Option<String>,
    /// Events of credentials issued on behalf of this subject (a person, or
    /// the workload a delegation chain started from).
    #[arg(long)]
    pub subject: Option<String>,
    /// The workload's attestation issuer: its configured name, or its iss.
    #[arg(long)]
    pub issuer: Option<String>,
    /// An event kind, or a family such as system.*
    #[arg(long)]
    pub kind: Option<String>,
    /// success, denied or failure.
    #[arg(long)]
    pub outcome: Option<String>,
    #[arg(long)]
    pub jti: Option<String>,
    /// RFC 3339, or a duration before now such as 24h.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
}

impl AuditFilterArgs {
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("system", &self.system),
            ("owner", &self.owner),
            ("workload", &self.workload),
            ("actor", &self.actor),
            ("subject", &self.subject),
            ("issuer", &self.issuer),
            ("kind", &self.kind),
            ("outcome", &self.outcome),
            ("jti", &self.jti),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Query events (a table; --json, or --csv for every match).
    Query {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Events per page (at most 1000); the table shows one page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this sequence number.
        #[arg(long)]
        cursor: Option<i64>,
        /// Every matching event as CSV.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// Export matching events to a file as JSONL (default) or CSV, streamed.
    Export {
        #[command(flatten)]
        filter: AuditFilterArgs,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Also save the signed checkpoints here (for offline verification).
        #[arg(long)]
        checkpoints: Option<std::path::PathBuf>,
    },
    /// Verify the chain and its signed checkpoints: through the server, directly on a database
    /// (or a copy of one) with --database, or offline from an unfiltered JSONL export with --file.
    Verify {
        #[arg(long)]
        from: Option<i64>,
        #[arg(long)]
        to: Option<i64>,
        /// Offline: a JSONL export of the whole log.
        #[arg(long, requires = "jwks", conflicts_with = "database")]
        file: Option<std::path::PathBuf>,
        /// Offline: the saved checkpoints (from `audit export --checkpoints`).
        #[arg(long, requires = "file")]
        checkpoints: Option<std::path::PathBuf>,
        /// The server's JWKS (GET /.well-known/jwks.json): needed with --file; with --database,
        /// instead of opening the stored keys with the KEK of --config.
        #[arg(long)]
        jwks: Option<std::path::PathBuf>,
        /// A database (or a copy of one) to verify directly, no server needed: sqlite://… or
        /// postgres://…
        #[arg(long)]
        database: Option<String>,
    },
}

fn print_report(report: &Value, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
    } else if report["ok"] == true {
        println!(
            "ok: {} events and {} checkpoints verified (head {})",
            cell(report, "events_checked"),
            cell(report, "checkpoints_checked"),
            cell(report, "head_seq")
        );
    } else {
        println!(
            "FAILED at event {}: {}",
            cell(&report["first_problem"], "seq"),
            cell(&report["first_problem"], "what")
        );
    }
    if report["ok"] == true { Ok(()) } else { bail!("the audit log does not verify") }
}

/// Verifies an exported JSONL file against checkpoints and a JWKS, offline.
/// `halflife audit verify --database <url>`: the chain and checkpoints of a
/// database read directly (no server). Checkpoints are checked against
/// `--jwks`, or against the keys stored in the database, opened with the KEK
/// of the configuration.
async fn verify_database(
    url: &str,
    jwks: Option<&std::path::Path>,
    config: &std::path::Path,
    from: Option<i64>,
    to: Option<i64>,
) -> anyhow::Result<crate::audit::VerifyReport> {
    let options = crate::store::OpenOptions {
        url: url.to_owned(),
        busy_timeout: Duration::from_secs(5),
        max_connections: 2,
        auto_migrate: false,
        application_name: "halflife audit verify".into(),
    };
    let store = crate::store::open(&options)
        .await
        .with_context(|| format!("failed to open database {}", crate::app::redacted(url)))?
        .store;
    let jwks: Value = match jwks {
        Some(path) => {
            serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
                .context("the JWKS file is not JSON")?
        }
        None => {
            let config = crate::config::Config::load_unvalidated(config).context(
                "checking the checkpoints needs the signing keys: give --jwks <file> (GET /.well-known/jwks.json), \
                 or --config with the KEK that opens the keys stored in the database",
            )?;
            let kek = crate::app::load_kek(&config)?;
            let sealed = store.signing_keys().await?;
            crate::keys::Keyring::from_sealed(&sealed, config.keys.algorithm, &kek)
                .context("the configuration's KEK does not open the keys stored in this database")?
                .all_jwks()
        }
    };
    crate::broker::audit::verify_log(store.as_ref(), &jwks, from, to).await.map_err(|e| anyhow::anyhow!(e.0))
}

fn verify_offline(
    file: &std::path::Path,
    checkpoints: Option<&std::path::Path>,
    jwks: &std::path::Path,
) -> anyhow::Result<Value> {
    use std::io::BufRead;
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(jwks).with_context(|| format!("reading {}", jwks.display()))?)
            .context("the JWKS file is not JSON")?;
    let checkpoints: Vec<crate::audit::Checkpoint> = match checkpoints {
        None => Vec::new(),
        Some(path) => {
            let v: Value =
                serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
                    .context("the checkpoints file is not JSON")?;
            serde_json::from_value(v.get("checkpoints").cloned().unwrap_or(v)).context("malformed checkpoints")?
        }
    };
    for c in &checkpoints {
        if let Err(why) = crate::audit::verify_checkpoint(c, &jwks) {
            return Ok(json!({"ok": false, "events_checked": 0, "checkpoints_checked": 0,
                             "first_problem": {"seq": c.seq, "what": format!("checkpoint: {why}")}}));
        }
    }
    let reader =
        std::io::BufReader::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?);
    let mut verifier = crate::audit::ChainVerifier::new(1, crate::audit::GENESIS.to_owned(), &checkpoints);
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("reading the export")?;
        if line.trim().is_empty() {
            continue;
        }
        let record: crate::audit::AuditRecord =
            serde_json::from_str(&line).with_context(|| format!("line {} is not an audit event", n + 1))?;
        if !verifier.push(&record) {
            break;
        }
    }
    Ok(json!(verifier.finish()))
}

pub async fn audit(remote: &Remote, command: AuditCommand, config: &std::path::Path) -> anyhow::Result<()> {
    if let AuditCommand::Verify { file: Some(file), checkpoints, jwks: Some(jwks), .. } = &command {
        if checkpoints.is_none() {
            eprintln!("warning: without --checkpoints a truncated tail cannot be detected");
        }
        return print_report(&verify_offline(file, checkpoints.as_deref(), jwks)?, remote.json);
    }
    if let AuditCommand::Verify { database: Some(url), jwks, from, to, .. } = &command {
        let report = verify_database(url, jwks.as_deref(), config, *from, *to).await?;
        return print_report(&json!(report), remote.json);
    }
    let c = Client::new(&remote.resolved(config)?)?;
    match command {
        AuditCommand::Query { filter, limit, cursor, csv } => {
            let mut path = format!("/v1/audit/events?{}", filter.query());
            if csv {
                path.push_str("&format=csv");
                let mut response = c.stream(&path).await?;
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                while let Some(chunk) = response.chunk().await.context("reading the export")? {
                    out.write_all(&chunk)?;
                }
                return Ok(());
            }
            path.push_str(&format!("&limit={limit}"));
            if let Some(cursor) = cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let v = c.call(Method::GET, &path, None).await?;
            c.print(&v, |v| {
                table(list(v, "events"), &["seq", "time", "kind", "outcome", "system_id", "actor", "jti", "reason"]);
                if let Some(next) = v.get("next_cursor").filter(|n| !n.is_null()) {
                    println!("(more: --cursor {next})");
                }
            });
        }
        AuditCommand::Export { filter, out, format, checkpoints } => {
            if !matches!(format.as_str(), "jsonl" | "csv") {
                bail!("--format must be jsonl or csv");
            }
            // Checkpoints first: each then lies within the events exported
            // after it, so none can look like a cut tail.
            if let Some(path) = &checkpoints {
                let v = c.call(Method::GET, "/v1/audit/checkpoints", None).await?;
                std::fs::write(path, serde_json::to_vec_pretty(&v)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let mut response = c.stream(&format!("/v1/audit/events?{}&format={format}", filter.query())).await?;
            let mut file =
                tokio::fs::File::create(&out).await.with_context(|| format!("creating {}", out.display()))?;
            use tokio::io::AsyncWriteExt;
            let mut bytes = 0usize;
            while let Some(chunk) = response.chunk().await.context("reading the export")? {
                bytes += chunk.len();
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            eprintln!("wrote {bytes} bytes to {}", out.display());
        }
        AuditCommand::Verify { from, to, .. } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(from) = from {
                q.append_pair("from", &from.to_string());
            }
            if let Some(to) = to {
                q.append_pair("to", &to.to_string());
            }
            let v = c.call(Method::GET, &format!("/v1/audit/verify?{}", q.finish()), None).await?;
            print_report(&v, c.json)?;
        }
    }
    Ok(())
}

//! The `halflife` command line.

pub mod client;
mod login;
mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;

use crate::app::{self, App};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, HumanDuration};
use crate::domain::model::Role;

/// Default configuration file, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "config/halflife.toml";

#[derive(Debug, Parser)]
#[command(
    name = "halflife",
    version,
    about = "Short-lived credential broker for AI workloads",
    long_about = "halflife swaps a workload's attested identity (a Kubernetes service-account token, a SPIFFE \
                  JWT-SVID, ...) for a scoped, short-lived credential, and records every issuance.\n\n\
                  Every configuration key can be overridden by an environment variable: HALFLIFE_ + the key path \
                  in upper case with __ between levels, e.g. HALFLIFE_SERVER__LISTEN=127.0.0.1:9090."
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "HALFLIFE_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Local(LocalCommand),
    #[command(flatten)]
    Remote(Box<RemoteCommand>),
}

/// Commands that work on the local configuration, database and keys.
#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Run the broker (creates and migrates the database and signing key on first start).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Load owners, systems and grants from a file (idempotent; prints what changed): through the
    /// running server (as the signed-in person, or HALFLIFE_TOKEN), or with --local directly on the database.
    Apply(ApplyArgs),
    /// Development helpers (work only while dev.enabled = true).
    #[command(subcommand)]
    Dev(DevCommand),
    /// Administrative tokens.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the workload-side agent: keep the credentials its configuration (--config agent.toml, an
    /// [agent] table) names fresh in files and on a local socket; `agent exec -- <command>` runs a
    /// command with them.
    Agent(AgentArgs),
    /// Exit 0 if the broker at --url answers ready (for container HEALTHCHECKs, which have no curl).
    Healthcheck {
        /// The readiness endpoint to ask.
        #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run a command once every credential is held, with each credential's file path in
    /// HALFLIFE_CREDENTIAL_<NAME>_FILE (never the values); forward signals to it and exit with its
    /// status.
    Exec {
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Validate the agent's configuration and print every problem with its key; exit 1 if any.
    Check,
    /// Exit 0 if the running agent (reached on agent.socket) holds every credential.
    Health,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file plus HALFLIFE_* variables) and print every problem with its
    /// key; exits 1 if there is any.
    Check,
}

/// Commands that talk to a running server's `/v1/` API.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Systems on a running server (as the signed-in person, or HALFLIFE_TOKEN).
    Systems {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::SystemsCommand,
    },
    /// Owners on a running server (as the signed-in person, or HALFLIFE_TOKEN).
    Owners {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::OwnersCommand,
    },
    /// Grants on a running server (as the signed-in person, or HALFLIFE_TOKEN).
    Grants {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::GrantsCommand,
    },
    /// Revoke credentials by workload identity or jti on a running server (as the signed-in person, or HALFLIFE_TOKEN).
    Revoke {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        args: client::RevokeArgs,
    },
    /// Query, export and verify the audit log (as the signed-in person or HALFLIFE_TOKEN, except offline verify).
    Audit {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::AuditCommand,
    },
    /// The background job queue on a running server (as the signed-in person, or HALFLIFE_TOKEN).
    Jobs {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::JobsCommand,
    },
    /// Signing keys on a running server: list, rotate, retire (as the signed-in person, or HALFLIFE_TOKEN).
    Keys {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::KeysCommand,
    },
    /// Sign in with your organisation's identity provider and keep the session for the other
    /// commands (device code, or a browser on this machine).
    Login {
        #[command(flatten)]
        remote: client::Remote,
        /// Sign in through a browser on this machine (authorization code with PKCE on a loopback
        /// redirect) even when the provider offers the device code.
        #[arg(long)]
        browser: bool,
    },
    /// End the stored session at its server and delete it.
    Logout,
    /// People's sessions on a running server: list, revoke.
    Sessions {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::SessionsCommand,
    },
    /// Access requests of grants that need a person's approval: list, show, approve, deny, revoke.
    Requests {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::RequestsCommand,
    },
    /// Break-glass approvals awaiting a second person's review: list, done.
    Reviews {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::ReviewsCommand,
    },
    /// Whom the server takes you for: person or automation, roles, expiry.
    Whoami {
        #[command(flatten)]
        remote: client::Remote,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The catalog file (TOML with [[owners]], [[systems]] and [[grants]]).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Show what would change without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply directly on the database of --config instead of through the server; recorded as a
    /// local apply by the operating-system user and host running it.
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub remote: client::Remote,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Mint a single-use development attestation and print it alone on stdout.
    Token(DevTokenArgs),
}

#[derive(Debug, Args)]
pub struct DevTokenArgs {
    /// Workload identity to attest, e.g. spiffe://dev.local/ns/ai/sa/summarizer.
    #[arg(long)]
    pub subject: String,
    /// Audience of the attestation (defaults to dev.audience, "halflife").
    #[arg(long)]
    pub audience: Option<String>,
    /// Lifetime, e.g. 10m (defaults to dev.token_ttl).
    #[arg(long)]
    pub ttl: Option<HumanDuration>,
    /// Write the attestation to this file (atomically, mode 0600) instead of printing it: the file an
    /// agent's attestation.file names.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With --out: keep writing a fresh attestation to the file at this interval until stopped, as
    /// a kubelet rotates a projected service-account token (dev attestations are single-use, so an
    /// agent needs a new one for each renewal).
    #[arg(long, requires = "out")]
    pub every: Option<HumanDuration>,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Admin bearer tokens for the introspection and operator APIs.
    #[command(subcommand)]
    Token(AdminTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Create a token; it is printed once, alone on the last line of stdout, and stored only as a hash.
    Create(AdminTokenCreateArgs),
    /// List every token with its role, expiry and last use (never the tokens themselves).
    List,
    /// Revoke a token by id; it stops working at once.
    Revoke {
        /// The token's id (from `create` or `list`).
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct AdminTokenCreateArgs {
    /// admin: everything; operator: systems, grants, revocation; auditor: read-only; introspector: introspection only.
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// What holds the token (recorded in the audit log), e.g. "ci-deployer". People sign in with `halflife
    /// login` instead.
    #[arg(long)]
    pub name: String,
    /// How long the token lasts, e.g. 30d (at most 732d).
    #[arg(long, default_value = "90d", value_parser = parse_token_ttl)]
    pub ttl: std::time::Duration,
}

fn parse_role(s: &str) -> Result<Role, String> {
    crate::broker::admin::automation_role(s).map_err(|e| format!("role {e}"))
}

fn parse_token_ttl(s: &str) -> Result<std::time::Duration, String> {
    crate::broker::admin::check_token_ttl(Some(s))
}

/// Sets up logging to stderr (stdout is reserved for command output).
/// Keeps trace export running; dropping it flushes what is pending.
#[must_use = "dropping the guard stops trace export"]
pub struct TracingGuard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing traces failed: {e}");
        }
    }
}

/// Logs to stderr, as text or JSON lines, filtered by `RUST_LOG` (default
/// `info`). Built with the `otel` feature, spans are also exported over
/// OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
pub fn init_tracing(format: LogFormat) -> TracingGuard {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // The trace exporter's HTTP client needs the one crypto provider.
    crate::crypto::install();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let output = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(output).with(filter);
    #[cfg(feature = "otel")]
    {
        let provider = otel::provider();
        let layer = provider.as_ref().map(otel::layer);
        registry.with(layer).init();
        TracingGuard { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        TracingGuard {}
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// An OTLP/HTTP exporter configured by the standard `OTEL_*` variables,
    /// if an endpoint is set.
    pub fn provider() -> Option<SdkTracerProvider> {
        let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|e| !e.is_empty()));
        if !configured {
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("warning: OpenTelemetry export is off: {e}");
                return None;
            }
        };
        let resource = opentelemetry_sdk::Resource::builder().with_service_name("halflife").build();
        Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
    }

    pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("halflife"))
    }
}

/// Runs a command; the process's exit code (0 unless `agent exec` passes
/// on its command's).
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    crate::crypto::install();
    match cli.command {
        Command::Remote(command) => run_remote(*command, &cli.config).await.map(|()| 0),
        Command::Local(LocalCommand::Agent(args)) => run_agent(args, &cli.config).await,
        Command::Local(command) => run_local(command, &cli.config).await.map(|()| 0),
    }
}

/// Every problem of a configuration, `halflife config check` style.
fn problem_report(path: &std::path::Path, problems: &[String]) -> String {
    let mut report =
        format!("{}: {} problem{}\n", path.display(), problems.len(), if problems.len() == 1 { "" } else { "s" });
    for problem in problems {
        report.push_str(&format!("  - {problem}\n"));
    }
    report
}

/// `halflife agent`, `agent exec`, `agent check`, `agent health`.
async fn run_agent(args: AgentArgs, config_path: &std::path::Path) -> anyhow::Result<u8> {
    if config_path == std::path::Path::new(DEFAULT_CONFIG) {
        bail!("halflife agent needs --config <agent.toml>: the agent's own file, with an [agent] table");
    }
    let settings = match crate::agent::config::load(config_path) {
        Ok(settings) => settings,
        Err(e) => {
            // `agent check` answers on stdout, like `config check`; a
            // starting agent on stderr, where its logs go.
            let report = problem_report(config_path, &e.problems());
            if matches!(args.command, Some(AgentCommand::Check)) {
                print!("{report}");
            } else {
                eprint!("{report}");
            }
            bail!("the agent's configuration is not usable; nothing was started");
        }
    };
    match args.command {
        None => crate::agent::run(settings, crate::agent::Mode::Daemon).await,
        Some(AgentCommand::Exec { command }) => crate::agent::run(settings, crate::agent::Mode::Exec(command)).await,
        Some(AgentCommand::Check) => {
            println!("{}: ok", config_path.display());
            Ok(0)
        }
        Some(AgentCommand::Health) => {
            println!("{}", crate::agent::health(&settings).await?);
            Ok(0)
        }
    }
}

async fn run_remote(command: RemoteCommand, config: &std::path::Path) -> anyhow::Result<()> {
    match command {
        RemoteCommand::Systems { remote, command } => client::systems(&remote.resolved(config)?, command).await,
        RemoteCommand::Owners { remote, command } => client::owners(&remote.resolved(config)?, command).await,
        RemoteCommand::Grants { remote, command } => client::grants(&remote.resolved(config)?, command).await,
        RemoteCommand::Revoke { remote, args } => client::revoke(&remote.resolved(config)?, args).await,
        RemoteCommand::Jobs { remote, command } => client::jobs(&remote.resolved(config)?, command).await,
        RemoteCommand::Keys { remote, command } => client::keys(&remote.resolved(config)?, command).await,
        RemoteCommand::Login { remote, browser } => login::login(&remote.resolved(config)?, browser).await,
        RemoteCommand::Logout => login::logout().await,
        RemoteCommand::Sessions { remote, command } => client::sessions(&remote.resolved(config)?, command).await,
        RemoteCommand::Whoami { remote } => client::whoami(&remote.resolved(config)?).await,
        RemoteCommand::Requests { remote, command } => client::requests(&remote.resolved(config)?, command).await,
        RemoteCommand::Reviews { remote, command } => client::reviews(&remote.resolved(config)?, command).await,
        // Offline verification needs no server at all.
        RemoteCommand::Audit { remote, command } => client::audit(&remote, command, config).await,
    }
}

/// `halflife healthcheck`: asks the readiness endpoint, briefly.
async fn healthcheck(url: &str) -> anyhow::Result<()> {
    crate::crypto::install();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building an HTTP client")?;
    let response = client.get(url).send().await.with_context(|| format!("{url} did not answer"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url} answered {status}: not ready");
    }
    println!("{url}: ready");
    Ok(())
}

/// `halflife config check`: every problem, each with its key.
fn check_config(config_path: &std::path::Path) -> anyhow::Result<()> {
    let problems: Vec<String> = match Config::load_unvalidated(config_path) {
        Ok(config) => {
            let mut problems = config.validate().err().unwrap_or_default();
            problems.extend(config.unreadable_files());
            problems.iter().map(ToString::to_string).collect()
        }
        Err(crate::config::ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        Err(crate::config::ConfigError::Load(why)) => why.lines().map(str::to_owned).collect(),
    };
    if problems.is_empty() {
        println!("{}: ok", config_path.display());
        return Ok(());
    }
    print!("{}", problem_report(config_path, &problems));
    bail!("the configuration is not usable")
}

async fn run_local(command: LocalCommand, config_path: &std::path::Path) -> anyhow::Result<()> {
    match &command {
        LocalCommand::Config(ConfigCommand::Check) => return check_config(config_path),
        LocalCommand::Healthcheck { url } => return healthcheck(url).await,
        LocalCommand::Apply(args) if !args.local => {
            return client::apply(&args.remote.resolved(config_path)?, &args.file, args.dry_run).await;
        }
        _ => {}
    }
    let config = Config::load(config_path)?;
    match command {
        LocalCommand::Serve => {
            let app = App::build(config, Arc::new(SystemClock)).await?;
            app.run(app::shutdown_signal()).await
        }
        LocalCommand::Migrate => {
            app::open_store(&config, true).await?;
            eprintln!("database {} is up to date", app::redacted(&config.database.url));
            Ok(())
        }
        LocalCommand::Apply(args) => {
            let store = app::open_store(&config, false).await?.store;
            let report =
                app::apply_file(store.as_ref(), &config, &args.file, &local_actor(), SystemClock.now(), args.dry_run)
                    .await?;
            client::print_apply_report(&serde_json::json!(report), args.dry_run);
            Ok(())
        }
        LocalCommand::Dev(DevCommand::Token(args)) => {
            if !config.dev.enabled {
                bail!(
                    "the dev issuer is disabled; set dev.enabled = true in {} (development only)",
                    config_path.display()
                );
            }
            crate::domain::values::SubjectMatch::parse(&args.subject)
                .ok()
                .filter(|m| matches!(m, crate::domain::values::SubjectMatch::Exact(_)))
                .context("--subject must be one workload identity (no wildcards, spaces or control characters)")?;
            let kek = app::load_kek(&config)?;
            let now = SystemClock.now();
            let issuer = crate::attest::dev::DevIssuer::load_or_create(&config, &kek, now)?;
            let ttl: Option<Duration> = args.ttl.map(HumanDuration::get);
            if ttl.is_some_and(|t| t.is_zero() || t > crate::config::MAX_DEV_TOKEN_TTL) {
                bail!("--ttl must be between 1s and 24h");
            }
            let Some(out) = &args.out else {
                let token = issuer.mint(&args.subject, args.audience.as_deref(), ttl, now)?;
                println!("{token}");
                return Ok(());
            };
            let sink = crate::agent::config::FileSink {
                path: out.clone(),
                format: crate::agent::config::FileFormat::Token,
                mode: 0o600,
                owner: None,
                group: None,
            };
            let mut tick = args.every.map(|every| tokio::time::interval(every.get().max(Duration::from_millis(100))));
            loop {
                let token = issuer.mint(&args.subject, args.audience.as_deref(), ttl, SystemClock.now())?;
                crate::agent::sink::write(&sink, token.as_bytes())
                    .with_context(|| format!("cannot write {}", out.display()))?;
                let Some(tick) = &mut tick else {
                    eprintln!("wrote a dev attestation for {} to {}", args.subject, out.display());
                    return Ok(());
                };
                tick.tick().await;
                tokio::select! {
                    _ = tick.tick() => {}
                    () = app::shutdown_signal() => return Ok(()),
                }
            }
        }
        LocalCommand::Agent(_) => bail!("halflife agent runs on its own configuration"),
        LocalCommand::Config(ConfigCommand::Check) => check_config(config_path),
        LocalCommand::Healthcheck { url } => healthcheck(&url).await,
        LocalCommand::Admin(AdminCommand::Token(AdminTokenCommand::Create(args))) => {
            let name = crate::broker::admin::check_token_name(&args.name).map_err(|e| anyhow::anyhow!("--name {e}"))?;
            let store = app::open_store(&config, false).await?.store;
            let (record, token) = crate::broker::admin::create_admin_token(
                store.as_ref(),
                args.role,
                name,
                args.ttl,
                &local_actor(),
                SystemClock.now(),
            )
            .await?;
            let expires = record.expires_at.map(crate::domain::rfc3339).unwrap_or_default();
            eprintln!(
                "created {} token {:?} (id {}, expires {expires}); it is shown once and stored only as a hash:",
                args.role, record.name, record.id
            );
            println!("{}", token.expose_secret());
            Ok(())
        }
        LocalCommand::Admin(AdminCommand::Token(AdminTokenCommand::List)) => {
            let store = app::open_store(&config, false).await?.store;
            let tokens = store.admin_tokens().await?;
            let time = |t: Option<time::OffsetDateTime>| t.map_or_else(|| "-".to_owned(), crate::domain::rfc3339);
            println!("{:<36}  {:<12}  {:<24}  {:<20}  {:<20}  STATE", "ID", "ROLE", "NAME", "EXPIRES", "LAST USED");
            let now = SystemClock.now();
            for t in tokens {
                let state = match (t.revoked_at, t.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(at)) if at <= now => "expired",
                    _ => "active",
                };
                println!(
                    "{:<36}  {:<12}  {:<24}  {:<20}  {:<20}  {state}",
                    t.id,
                    t.role,
                    crate::domain::identity::visible(&t.name),
                    time(t.expires_at),
                    time(t.last_used_at)
                );
            }
            Ok(())
        }
        LocalCommand::Admin(AdminCommand::Token(AdminTokenCommand::Revoke { id })) => {
            let store = app::open_store(&config, false).await?.store;
            let mut event = crate::store::AuditEvent::new(
                "admin_token.revoked",
                crate::store::Outcome::Success,
                SystemClock.now(),
                &crate::store::RequestMeta::default(),
            );
            event.actor = Some(local_actor());
            event.detail = Some(serde_json::json!({"id": id}));
            if !store.revoke_admin_token(&id, event).await? {
                bail!("no active token {id}");
            }
            eprintln!("revoked token {id}");
            Ok(())
        }
    }
}

/// Who runs a command directly on the database, as the operating system
/// tells this process (never from the environment, which the caller
/// sets): `local:<user>(uid=<uid>)@<host>`.
pub fn local_actor() -> String {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:").and_then(|ids| ids.split_whitespace().next()).map(str::to_owned))
    });
    let user = uid.as_deref().and_then(|uid| {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid).then(|| name.to_owned())
        })
    });
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    let who = match (user, uid) {
        (Some(user), Some(uid)) => format!("{user}(uid={uid})"),
        (None, Some(uid)) => format!("uid={uid}"),
        _ => "unknown-user".to_owned(),
    };
    crate::domain::identity::visible(&format!("local:{who}@{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_actor_comes_from_the_process_not_the_environment() {
        let actor = local_actor();
        assert!(actor.starts_with("local:"), "{actor}");
        assert!(actor.contains("uid="), "{actor}");
        assert!(actor.contains('@'), "{actor}");
    }

    #[test]
    fn a_key_id_that_starts_with_a_hyphen_is_a_key_id() {
        for args in [
            &["halflife", "keys", "retire", "-Iq3x_kid", "--force"][..],
            &["halflife", "keys", "retire", "--force", "-Iq3x_kid"][..],
            &["halflife", "keys", "retire", "-Iq3x_kid"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let shown = format!("{:?}", cli.command);
            assert!(shown.contains("\"-Iq3x_kid\""), "{args:?}: {shown}");
            assert_eq!(shown.contains("force: true"), args.contains(&"--force"), "{args:?}: {shown}");
        }
    }
}

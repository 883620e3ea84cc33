//! Dynamic PostgreSQL logins on the databases workloads use (not
//! halflife's own database): a role per credential, created with a random
//! password, `VALID UNTIL` its expiry and the backend's grant template, and
//! destroyed for real — sessions terminated, what it owns dropped, the role
//! dropped.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;

/// How a backend is reached and what a login on it may do.
#[derive(Clone)]
pub struct BackendSpec {
    pub name: String,
    pub admin_url: String,
    pub admin_password: Option<SecretString>,
    /// SQL run for each new role, `{{role}}` replaced by its quoted name.
    pub grants: Vec<String>,
    pub connection_limit: u32,
    pub max_ttl: Duration,
    /// Prefix of the roles created here (starts with [`crate::config::ROLE_PREFIX`]).
    pub role_prefix: String,
    /// What clients are told to connect to.
    pub host: String,
    pub port: u16,
    pub database: String,
}

/// Where a client connects with a login.
#[derive(Debug, Clone)]
pub struct LoginTarget {
    pub role_prefix: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub max_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("database backend {backend}: {message}")]
pub struct LoginError {
    pub backend: String,
    pub message: String,
}

#[async_trait]
pub trait DatabaseLogins: Send + Sync {
    fn target(&self, backend: &str) -> Option<LoginTarget>;
    /// Creates `role` with `password`, valid until `valid_until`, and runs
    /// the backend's grant template, all in one transaction.
    async fn create_login(
        &self,
        backend: &str,
        role: &str,
        password: &SecretString,
        valid_until: OffsetDateTime,
    ) -> Result<(), LoginError>;
    /// Ends `role`'s sessions, drops what it owns and drops it. Dropping a
    /// role that does not exist succeeds.
    async fn drop_login(&self, backend: &str, role: &str) -> Result<(), LoginError>;
    /// Roles on `backend` with the halflife prefix.
    async fn prefixed_roles(&self, backend: &str) -> Result<Vec<String>, LoginError>;
    fn backends(&self) -> Vec<String>;
}

struct Backend {
    spec: BackendSpec,
    pool: PgPool,
}

/// The configured PostgreSQL backends, each with a small lazy admin pool.
pub struct PgLogins {
    backends: HashMap<String, Backend>,
}

impl PgLogins {
    pub fn new(specs: Vec<BackendSpec>) -> Result<Self, LoginError> {
        let mut backends = HashMap::new();
        for spec in specs {
            let err = |message: String| LoginError { backend: spec.name.clone(), message };
            let mut options: PgConnectOptions =
                spec.admin_url.parse().map_err(|e: sqlx::Error| err(format!("admin_url: {e}")))?;
            if let Some(password) = &spec.admin_password {
                options = options.password(password.expose_secret());
            }
            options = options.application_name("halflife logins").disable_statement_logging();
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(options);
            backends.insert(spec.name.clone(), Backend { spec, pool });
        }
        Ok(Self { backends })
    }

    fn backend(&self, name: &str) -> Result<&Backend, LoginError> {
        self.backends.get(name).ok_or_else(|| LoginError { backend: name.to_owned(), message: "not configured".into() })
    }
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Runs `script` as one simple-protocol request: PostgreSQL runs its
/// statements as one implicit transaction.
async fn run(pool: &PgPool, backend: &str, script: &str) -> Result<(), LoginError> {
    sqlx::raw_sql(script).execute(pool).await.map(|_| ()).map_err(failed(backend))
}

fn failed(backend: &str) -> impl Fn(sqlx::Error) -> LoginError + '_ {
    move |e| LoginError { backend: backend.to_owned(), message: e.to_string() }
}

#[async_trait]
impl DatabaseLogins for PgLogins {
    fn target(&self, backend: &str) -> Option<LoginTarget> {
        self.backends.get(backend).map(|b| LoginTarget {
            role_prefix: b.spec.role_prefix.clone(),
            host: b.spec.host.clone(),
            port: b.spec.port,
            database: b.spec.database.clone(),
            max_ttl: b.spec.max_ttl,
        })
    }

    fn backends(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }

    async fn create_login(
        &self,
        backend: &str,
        role: &str,
        password: &SecretString,
        valid_until: OffsetDateTime,
    ) -> Result<(), LoginError> {
        let b = self.backend(backend)?;
        let until = valid_until
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| LoginError { backend: backend.to_owned(), message: e.to_string() })?;
        // The role exists with its grants or not at all. Passwords cannot be
        // bound as parameters in DDL; the password is base64url, so no quote
        // can occur in it.
        let mut script = format!(
            "CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {} CONNECTION LIMIT {};\n",
            ident(role),
            literal(password.expose_secret()),
            literal(&until),
            b.spec.connection_limit
        );
        for grant in &b.spec.grants {
            script.push_str(&grant.replace("{{role}}", &ident(role)));
            script.push_str(";\n");
        }
        let script = zeroize::Zeroizing::new(script);
        run(&b.pool, backend, &script).await
    }

    async fn drop_login(&self, backend: &str, role: &str) -> Result<(), LoginError> {
        let b = self.backend(backend)?;
        let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(&b.pool)
            .await
            .map_err(failed(backend))?;
        if exists.is_none() {
            return Ok(());
        }
        // No new sessions; end the open ones; then drop what the role owns
        // and the role.
        let role_ident = ident(role);
        let script = format!(
            "ALTER ROLE {role_ident} NOLOGIN;\n\
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {};\n",
            literal(role)
        );
        run(&b.pool, backend, &script).await?;
        let script = format!(
            "REASSIGN OWNED BY {role_ident} TO CURRENT_USER;\nDROP OWNED BY {role_ident};\nDROP ROLE {role_ident};\n"
        );
        run(&b.pool, backend, &script).await
    }

    async fn prefixed_roles(&self, backend: &str) -> Result<Vec<String>, LoginError> {
        let b = self.backend(backend)?;
        let rows: Vec<(String,)> = sqlx::query_as("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)")
            .bind(&b.spec.role_prefix)
            .fetch_all(&b.pool)
            .await
            .map_err(failed(backend))?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }
}

/// A role name for a login of `system`: `<prefix><system>_<8 hex>`, at
/// most 63 bytes (PostgreSQL's identifier limit).
pub fn role_name(prefix: &str, system: &str, random: [u8; 4]) -> String {
    let system: String = system.chars().map(|c| if c == '-' { '_' } else { c }).take(36).collect();
    format!("{prefix}{system}_{}", crate::crypto::hex(&random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quoting() {
        assert_eq!(role_name("hlf_", "summarizer-1", [0xab, 0xcd, 0x01, 0x02]), "hlf_summarizer_1_abcd0102");
        assert!(role_name("hlf_0123456789ab", &"s".repeat(64), [0; 4]).len() <= 63);
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}

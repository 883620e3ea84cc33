//! Dynamic PostgreSQL logins, against the real server on 127.0.0.1:5432
//! (`HALFLIFE_TEST_DATABASE_URL`): each test gets a backend database of
//! its own and a role prefix of its own, so tests running in parallel never
//! touch each other's roles.

use std::net::SocketAddr;
use std::time::Duration;

use halflife::clock::Clock;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::helpers::*;

const LOGIN: &str = "urn:halflife:token-type:postgres-login";
pub const DB_AGENT: &str = "system:serviceaccount:ai:db-agent";

/// A database for workloads, with a schema the template grants and one it
/// does not.
pub struct Backend {
    admin_url: url::Url,
    pub database: String,
    prefix: String,
}

impl Backend {
    pub async fn create() -> Option<Self> {
        let Ok(admin) = std::env::var("HALFLIFE_TEST_DATABASE_URL") else {
            eprintln!(
                "skipped: HALFLIFE_TEST_DATABASE_URL is not set (database logins need PostgreSQL; .ci/run sets it)"
            );
            return None;
        };
        let tag = halflife::crypto::hex(&halflife::crypto::random_bytes::<3>().unwrap());
        let database = format!("halflife_b_{tag}");
        let mut conn = PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut conn).await.unwrap();
        let mut admin_url = url::Url::parse(&admin).unwrap();
        admin_url.set_path(&format!("/{database}"));
        let mut db = PgConnection::connect(admin_url.as_str()).await.unwrap();
        sqlx::raw_sql(
            "CREATE SCHEMA reports; CREATE TABLE reports.daily (day int); INSERT INTO reports.daily VALUES (1), (2), (3);
             CREATE SCHEMA private; CREATE TABLE private.salaries (amount int);",
        )
        .execute(&mut db)
        .await
        .unwrap();
        Some(Self { admin_url, database, prefix: format!("hlf_t{tag}_") })
    }

    /// The broker's configuration for this backend, reached at `addr`.
    pub fn config(&self, addr: SocketAddr) -> String {
        let mut url = self.admin_url.clone();
        url.set_host(Some(&addr.ip().to_string())).unwrap();
        url.set_port(Some(addr.port())).unwrap();
        format!(
            r#"
[[postgres_backends]]
name = "reports"
admin_url = "{url}"
grants = ["GRANT USAGE ON SCHEMA reports TO {{{{role}}}}", "GRANT SELECT ON ALL TABLES IN SCHEMA reports TO {{{{role}}}}"]
connection_limit = 3
max_ttl = "30m"
role_prefix = "{prefix}"
"#,
            prefix = self.prefix
        )
    }

    pub fn direct(&self) -> SocketAddr {
        format!("{}:{}", self.admin_url.host_str().unwrap(), self.admin_url.port().unwrap_or(5432)).parse().unwrap()
    }

    async fn role_exists(&self, role: &str) -> bool {
        let mut conn = PgConnection::connect(self.admin_url.as_str()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n == 1
    }

    async fn execute(&self, sql: &str) {
        let mut conn = PgConnection::connect(self.admin_url.as_str()).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let (url, database, prefix) = (self.admin_url.clone(), self.database.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut maintenance = url.clone();
                maintenance.set_path("/postgres");
                if let Ok(mut conn) = PgConnection::connect(maintenance.as_str()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let roles: Vec<(String,)> =
                        sqlx::query_as("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)")
                            .bind(&prefix)
                            .fetch_all(&mut conn)
                            .await
                            .unwrap_or_default();
                    for (role,) in roles {
                        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{role}\"")).execute(&mut conn).await;
                    }
                }
            });
        })
        .join();
    }
}

pub fn catalog() -> String {
    format!(
        "{}{}",
        default_catalog(),
        r#"
[[grants]]
id = "summarizer-db"
system = "summarizer"
issuer = "k8s"
subject = "system:serviceaccount:ai:db-agent"
audiences = ["reports-api"]
kinds = ["postgres:reports"]
max_ttl = "15m"
"#
    )
}

async fn login(app: &TestApp, extra: &[(&str, &str)]) -> Value {
    let mut form = vec![("requested_token_type", LOGIN), ("resource", "postgres:reports")];
    form.extend_from_slice(extra);
    app.exchange_ok(&app.rsa.token(DB_AGENT, app.now()), &form).await
}

/// Connects as the login a response describes.
async fn connect(body: &Value) -> Result<PgConnection, sqlx::Error> {
    let options = PgConnectOptions::new()
        .host(body["host"].as_str().unwrap())
        .port(u16::try_from(body["port"].as_u64().unwrap()).unwrap())
        .username(body["username"].as_str().unwrap())
        .password(body["password"].as_str().unwrap())
        .database(body["database"].as_str().unwrap());
    PgConnection::connect_with(&options).await
}

#[tokio::test]
async fn a_login_reads_what_its_template_grants_and_dies_with_its_system() {
    let Some(backend) = Backend::create().await else { return };
    let extra_config = backend.config(backend.direct());
    let Some(app) = spawn_with(Options { extra_config, catalog: catalog(), ..Options::default() }).await else {
        return;
    };

    let body = login(&app, &[]).await;
    assert_eq!(body["issued_token_type"], LOGIN);
    let role = body["username"].as_str().unwrap().to_owned();
    assert!(role.starts_with(&format!("{}summarizer_", backend.prefix)), "{role}");
    assert_eq!(body["password"], body["access_token"]);
    assert_eq!(body["database"], backend.database.as_str());
    assert_eq!(body["expires_in"], 300);
    assert!(body["expires_at"].is_string());
    assert!(backend.role_exists(&role).await);

    // The auditor can go from the role to the workload and system.
    const DETAIL: &str = "SELECT COALESCE(detail, (SELECT name FROM audit_names WHERE id = detail_id)) \
         FROM audit_events WHERE kind = 'credential.issued'";
    let detail: String = match app.raw().await {
        RawDb::Sqlite(mut c) => sqlx::query_scalar(DETAIL).fetch_one(&mut c).await.unwrap(),
        RawDb::Postgres(mut c) => sqlx::query_scalar(DETAIL).fetch_one(&mut c).await.unwrap(),
    };
    let detail: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["db_role"], role.as_str());
    assert_eq!(detail["db_backend"], "reports");

    // What the template grants, and nothing else.
    let mut session = connect(&body).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM reports.daily").fetch_one(&mut session).await.unwrap();
    assert_eq!(n, 3);
    assert!(sqlx::query("INSERT INTO reports.daily VALUES (4)").execute(&mut session).await.is_err());
    assert!(sqlx::query("SELECT * FROM private.salaries").execute(&mut session).await.is_err());

    // Revoke the system while the session is open: the session ends and
    // the role is gone.
    let admin = app.admin_token(halflife::domain::model::Role::Admin).await;
    let (status, _) =
        app.api(Method::POST, "/v1/systems/summarizer/revoke", &admin, Some(json!({"reason": "pilot over"}))).await;
    assert_eq!(status, 200);
    let report = app.reap().await;
    assert_eq!(report.logins_queued, 1);
    assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err(), "the session survived the revocation");
    assert!(!backend.role_exists(&role).await, "the role survived the revocation");
    assert!(connect(&body).await.is_err());
    assert_eq!(app.scalar("SELECT count(*) FROM credentials WHERE role_state = 'dropped'").await, 1);
}

#[tokio::test]
async fn expired_logins_are_dropped_and_the_sweep_drops_unrecorded_roles() {
    let Some(backend) = Backend::create().await else { return };
    let extra_config = backend.config(backend.direct());
    let Some(app) = spawn_with(Options { extra_config, catalog: catalog(), ..Options::default() }).await else {
        return;
    };

    let short = login(&app, &[("requested_ttl", "60")]).await;
    let long = login(&app, &[]).await;
    let (short_role, long_role) = (short["username"].as_str().unwrap(), long["username"].as_str().unwrap());
    // A role a crash left between creation and record.
    let stray = format!("{}stray_00000000", backend.prefix);
    backend.execute(&format!("CREATE ROLE \"{stray}\" LOGIN")).await;

    app.clock.advance(Duration::from_secs(61));
    let report = app.reap().await;
    assert_eq!(report.logins_queued, 1);
    assert!(!backend.role_exists(short_role).await, "the expired login's role survived");
    assert!(connect(&short).await.is_err());
    assert!(backend.role_exists(long_role).await);

    assert_eq!(app.broker.sweep_logins().await.unwrap(), 1);
    assert!(!backend.role_exists(&stray).await);
    assert!(backend.role_exists(long_role).await, "the sweep dropped a live login");

    // A single revocation by jti destroys that login and no other.
    let single = login(&app, &[]).await;
    let jti = app.events("credential.issued").await.last().unwrap().jti.clone().unwrap();
    let admin = app.admin_token(halflife::domain::model::Role::Admin).await;
    let (status, _) = app.api(Method::POST, "/v1/revoke", &admin, Some(json!({"jti": jti, "reason": "leaked"}))).await;
    assert_eq!(status, 200);
    assert_eq!(app.reap().await.logins_queued, 1);
    assert!(!backend.role_exists(single["username"].as_str().unwrap()).await);
    assert!(backend.role_exists(long_role).await);
}

#[tokio::test]
async fn a_drop_that_fails_is_retried_after_a_restart_until_it_completes() {
    let Some(backend) = Backend::create().await else { return };
    let proxy = Proxy::start(backend.direct()).await;
    let extra_config = backend.config(format!("127.0.0.1:{}", proxy.port).parse().unwrap());
    let Some(app) = spawn_with(Options { extra_config, catalog: catalog(), ..Options::default() }).await else {
        return;
    };
    let body = login(&app, &[]).await;
    let role = body["username"].as_str().unwrap().to_owned();

    // The backend becomes unreachable; the system is revoked.
    proxy.cut().await;
    let admin = app.admin_token(halflife::domain::model::Role::Admin).await;
    let (status, _) =
        app.api(Method::POST, "/v1/systems/summarizer/revoke", &admin, Some(json!({"reason": "x"}))).await;
    assert_eq!(status, 200);
    let report = app.reap().await;
    assert_eq!((report.logins_queued, report.jobs_failed), (1, 1));
    let (_, jobs) = app.api(Method::GET, "/v1/jobs", &admin, None).await;
    let job = jobs["jobs"].as_array().unwrap().iter().find(|j| j["kind"] == "drop_login").expect("a drop_login job");
    assert_eq!(job["attempts"], 1);
    assert!(job["last_error"].as_str().unwrap().contains("reports"), "{job}");
    assert!(backend.role_exists(&role).await);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"halflife_jobs{kind="drop_login",status="pending"} 1"#), "{metrics}");

    // A restart in between: the job is still there and still failing.
    let app = app.restart().await;
    app.clock.advance(Duration::from_secs(10));
    assert_eq!(app.reap().await.jobs_failed, 1);

    // The backend comes back: the next attempt completes.
    proxy.restore();
    app.clock.advance(Duration::from_secs(60));
    let report = app.reap().await;
    assert_eq!((report.jobs_done, report.jobs_failed), (1, 0));
    assert!(!backend.role_exists(&role).await);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("drop_login"), "{metrics}");
}

#[tokio::test]
async fn no_login_outlives_a_failed_record_and_an_unreachable_backend_issues_nothing() {
    let Some(backend) = Backend::create().await else { return };
    let proxy = Proxy::start(backend.direct()).await;
    let extra_config = backend.config(format!("127.0.0.1:{}", proxy.port).parse().unwrap());
    let options = Options { extra_config, catalog: catalog(), busy_timeout: "200ms", ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };
    let prefixed = || async {
        let mut conn = PgConnection::connect(backend.admin_url.as_str()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)")
            .bind(&backend.prefix)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n
    };

    // The role is created, then its record cannot be committed: it is
    // dropped before the 503.
    let lock = app.lock_database().await;
    let token = app.rsa.token(DB_AGENT, app.now());
    let response = app.exchange(&token, &[("requested_token_type", LOGIN), ("resource", "postgres:reports")]).await;
    assert_eq!(response.status(), 503);
    drop(lock);
    assert_eq!(prefixed().await, 0, "a role outlived its failed record");

    // The backend is unreachable: 503, nothing issued, the refusal recorded.
    proxy.cut().await;
    let token = app.rsa.token(DB_AGENT, app.now());
    let response = app.exchange(&token, &[("requested_token_type", LOGIN), ("resource", "postgres:reports")]).await;
    assert_eq!(response.status(), 503);
    assert_eq!(app.credential_count().await, 0);
    let denied = app.events("credential.denied").await;
    assert!(denied.iter().any(|e| e.reason.as_deref().is_some_and(|r| r.contains("database backend reports"))));

    // A resource that is not a backend, or a login without one.
    proxy.restore();
    let token = app.rsa.token(DB_AGENT, app.now());
    let response = app.exchange(&token, &[("requested_token_type", LOGIN), ("resource", "https://x")]).await;
    assert_eq!(response.status(), 400);
    let response = app.exchange(&token, &[("requested_token_type", LOGIN)]).await;
    assert_eq!(response.status(), 400);
    let body = login(&app, &[]).await;
    assert!(backend.role_exists(body["username"].as_str().unwrap()).await);
}

/// A login issued before its business owner lapsed is dropped once a catalog
/// swaps the owner: the swap suspends the system first, so nothing is cured.
#[tokio::test]
async fn a_login_does_not_survive_a_cured_lapse() {
    let Some(backend) = Backend::create().await else { return };
    let extra_config = backend.config(backend.direct());
    let Some(app) = spawn_with(Options { extra_config, catalog: catalog(), ..Options::default() }).await else {
        return;
    };
    let operator = app.admin_token(halflife::domain::model::Role::Operator).await;
    let apply = async |text: String| {
        let file = halflife::broker::apply::parse(&text).unwrap();
        let body = serde_json::to_value(&file).unwrap();
        app.api(Method::POST, "/v1/catalog", &operator, Some(body)).await
    };
    // biz's attestation is brought forward to ten seconds from now.
    let until = halflife::domain::rfc3339(app.clock.now() + Duration::from_secs(10));
    let soon = catalog().replacen(
        "email = \"biz@example.com\"",
        &format!("email = \"biz@example.com\"\nattested_until = \"{until}\""),
        1,
    );
    let (status, body) = apply(soon.clone()).await;
    assert_eq!(status, 200, "{body}");
    let before = login(&app, &[]).await;
    let role = before["username"].as_str().unwrap().to_owned();

    app.clock.advance(Duration::from_secs(20));
    let swapped = soon.replacen("business_owner = \"biz\"", "business_owner = \"nina\"", 1)
        + "\n[[owners]]\nid = \"nina\"\ndisplay_name = \"Nina\"\nemail = \"nina@example.com\"\n";
    let (status, body) = apply(swapped).await;
    assert_eq!(status, 200, "{body}");
    let (_, system) = app.api(Method::GET, "/v1/systems/summarizer", &operator, None).await;
    assert_eq!((&system["state"], &system["business_owner"]), (&json!("suspended"), &json!("nina")), "{system}");
    assert_eq!(app.reap().await.logins_queued, 1);
    assert!(!backend.role_exists(&role).await, "the login outlived the lapse");
    assert!(connect(&before).await.is_err());
}

/// Removing the grant a login was issued under drops the login.
#[tokio::test]
async fn a_removed_grant_drops_its_logins() {
    let Some(backend) = Backend::create().await else { return };
    let extra_config = backend.config(backend.direct());
    let Some(app) = spawn_with(Options { extra_config, catalog: catalog(), ..Options::default() }).await else {
        return;
    };
    let operator = app.admin_token(halflife::domain::model::Role::Operator).await;
    let body = login(&app, &[]).await;
    let role = body["username"].as_str().unwrap().to_owned();
    let jwt = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let (status, answer) =
        app.api(Method::DELETE, "/v1/systems/summarizer/grants/summarizer-db", &operator, None).await;
    assert_eq!((status, &answer["revoked"]), (200, &json!(1)), "{answer}");
    assert_eq!(app.reap().await.logins_queued, 1);
    assert!(!backend.role_exists(&role).await, "the login outlived its grant");
    let introspector = app.admin_token(halflife::domain::model::Role::Introspector).await;
    assert_eq!(
        app.introspect(&introspector, jwt["access_token"].as_str().unwrap()).await["active"],
        true,
        "the system's other grant is untouched"
    );
}

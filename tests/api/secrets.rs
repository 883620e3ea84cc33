//! Opaque secrets (`urn:halflife:token-type:secret`): scoped and time-bound
//! like a JWT, introspectable and revocable, stored only as a keyed hash.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET_TYPE: &str = "urn:halflife:token-type:secret";
const AGENT: &str = "system:serviceaccount:ai:secret-agent";

const SECRET_GRANT: &str = r#"
[[grants]]
id = "summarizer-secrets"
system = "summarizer"
issuer = "k8s"
subject = "system:serviceaccount:ai:secret-agent"
audiences = ["reports-api"]
scopes = ["reports:read", "reports:write"]
default_scopes = ["reports:read"]
kinds = ["jwt", "secret"]
max_ttl = "10m"
"#;

async fn secret(app: &TestApp, extra: &[(&str, &str)]) -> Value {
    let mut form = vec![("requested_token_type", SECRET_TYPE)];
    form.extend_from_slice(extra);
    app.exchange_ok(&app.rsa.token(AGENT, app.now()), &form).await
}

/// Everything a database dump of the tables that could hold a secret
/// contains, as text.
async fn dump(app: &TestApp) -> String {
    match app.raw().await {
        RawDb::Postgres(mut c) => {
            let mut text = String::new();
            for table in ["credentials", "audit_events"] {
                let rows: Vec<(String,)> =
                    sqlx::query_as(&format!("SELECT t::text FROM {table} t")).fetch_all(&mut c).await.unwrap();
                text.extend(rows.into_iter().map(|(r,)| r));
            }
            text
        }
        RawDb::Sqlite(_) => {
            // The database file and its WAL, byte for byte.
            let TestDb::Sqlite(path) = app.db.as_ref() else { unreachable!() };
            let mut bytes = std::fs::read(path).unwrap();
            bytes.extend(std::fs::read(path.with_extension("db-wal")).unwrap_or_default());
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

#[tokio::test]
async fn opaque_secrets_are_scoped_revocable_and_never_stored() {
    let catalog = format!("{}{SECRET_GRANT}", default_catalog());
    let Some(app) = spawn_with(Options { catalog, ..Options::default() }).await else { return };
    let admin = app.admin_token(halflife::domain::model::Role::Admin).await;

    let body = secret(&app, &[("scope", "reports:write"), ("requested_ttl", "120")]).await;
    assert_eq!(body["issued_token_type"], SECRET_TYPE);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120);
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("hlf_") && token.len() == 53, "{token}");
    assert!(halflife::mint::secret::well_formed(&token));

    // Introspection answers for it exactly as for a JWT.
    let info = app.introspect(&admin, &token).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], AGENT);
    assert_eq!(info["aud"], "reports-api");
    assert_eq!(info["scope"], "reports:write");
    assert_eq!(info["system"], "summarizer");
    assert_eq!(info["exp"].as_i64(), Some(app.now() + 120));
    let jti = info["jti"].as_str().unwrap().to_owned();
    let issued = app.events("credential.issued").await;
    assert!(issued.iter().any(|e| e.jti.as_deref() == Some(jti.as_str())));

    // A typo fails the checksum; a value of the right shape that was
    // never issued is unknown: both inactive.
    let mut typo = token.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(app.introspect(&admin, &typo).await, json!({"active": false}));
    let forged = {
        use secrecy::ExposeSecret;
        halflife::mint::secret::generate().unwrap().expose_secret().to_owned()
    };
    assert_eq!(app.introspect(&admin, &forged).await, json!({"active": false}));

    // Expiry.
    app.clock.advance(std::time::Duration::from_secs(121));
    assert_eq!(app.introspect(&admin, &token).await, json!({"active": false}));

    // RFC 7009: the holder revokes it.
    let token = secret(&app, &[]).await["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.introspect(&admin, &token).await["active"], true);
    let response = app.client.post(app.url("/oauth2/revoke")).form(&[("token", token.as_str())]).send().await;
    assert_eq!(response.unwrap().status(), 200);
    assert_eq!(app.introspect(&admin, &token).await, json!({"active": false}));
    assert_eq!(app.events("credential.revoked").await.len(), 1);

    // Revoking the system revokes its secrets.
    let token = secret(&app, &[]).await["access_token"].as_str().unwrap().to_owned();
    let (status, _) =
        app.api(Method::POST, "/v1/systems/summarizer/revoke", &admin, Some(json!({"reason": "drill"}))).await;
    assert_eq!(status, 200);
    assert_eq!(app.introspect(&admin, &token).await, json!({"active": false}));

    // Neither the secret nor its plain SHA-256 is anywhere in the database.
    let dumped = dump(&app).await;
    for secret in [&token, &typo] {
        assert!(!dumped.contains(secret.as_str()), "the plaintext secret is stored");
        let plain_hash = halflife::crypto::hex(&halflife::crypto::sha256(secret.as_bytes()));
        assert!(!dumped.contains(&plain_hash), "an unkeyed hash of the secret is stored");
    }
    assert!(dumped.contains("secret"), "the dump should at least name the credential kind");
}

#[tokio::test]
async fn a_grant_must_allow_secrets_and_binding_grants_refuse_them() {
    let catalog = format!(
        "{}{SECRET_GRANT}{}",
        default_catalog(),
        r#"
[[grants]]
id = "summarizer-bound-secrets"
system = "summarizer"
issuer = "k8s"
subject = "system:serviceaccount:ai:bound-secret-agent"
audiences = ["reports-api"]
kinds = ["jwt", "secret"]
max_ttl = "10m"
binding = "required"
"#
    );
    let Some(app) = spawn_with(Options { catalog, ..Options::default() }).await else { return };
    // summarizer-k8s allows only JWTs.
    let response = app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[("requested_token_type", SECRET_TYPE)]).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized_client");
    assert!(body["error_description"].as_str().unwrap().contains("credential kind secret"), "{body}");

    let token = app.rsa.token("system:serviceaccount:ai:bound-secret-agent", app.now());
    let response = app.exchange(&token, &[("requested_token_type", SECRET_TYPE)]).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error_description"].as_str().unwrap().contains("cannot be bound"), "{body}");
    assert_eq!(app.credential_count().await, 0);

    // The metadata names the token type.
    let meta: Value =
        app.client.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert!(meta["requested_token_types_supported"].as_array().unwrap().contains(&json!(SECRET_TYPE)));
}

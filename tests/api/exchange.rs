//! Successful exchanges and what they record.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn rs256_attestation_gets_a_scoped_short_lived_jwt() {
    let Some(app) = spawn_app().await else { return };
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let body = app.exchange_ok(&attestation, &[]).await;

    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(body["expires_in"], 300, "default lifetime is 5 minutes");
    assert_eq!(body["scope"], "reports:read", "default scopes of the grant");

    let token = body["access_token"].as_str().unwrap();
    let (header, claims) = parts(token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(claims["iss"], app.base);
    assert_eq!(claims["sub"], RSA_SUBJECT);
    assert_eq!(claims["client_id"], RSA_SUBJECT);
    assert_eq!(claims["aud"], "reports-api", "the grant's only audience is used when none is asked");
    assert_eq!(claims["system"], "summarizer");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 300);
    assert_eq!(claims["nbf"], claims["iat"]);
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(jti).unwrap().get_version_num(), 7);

    // Offline verification against the published JWKS.
    let verified = verify_with_jwks(&app, token).await;
    assert_eq!(verified["jti"], jti);

    // The issuance record names the credential, the workload and the
    // attestation (its jti), never the token.
    let issued = app.events("credential.issued").await;
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].jti.as_deref(), Some(jti));
    assert_eq!(issued[0].system_id.as_deref(), Some("summarizer"));
    assert_eq!(issued[0].subject.as_deref(), Some(RSA_SUBJECT));
    let (_, attestation_claims) = parts(&attestation);
    assert_eq!(issued[0].attestation_id.as_deref(), attestation_claims["jti"].as_str());
    assert_eq!(issued[0].source.as_deref(), Some("127.0.0.1"));
    assert!(issued[0].request_id.is_some());
    assert_eq!(app.credential_count().await, 1);

    // What an auditor reads: the owners once (business, then technical),
    // the credential's kind and the key that signed it.
    let auditor = app.admin_token(halflife::domain::model::Role::Auditor).await;
    let (_, page) = app.api(reqwest::Method::GET, "/v1/audit/events?kind=credential.issued", &auditor, None).await;
    let event = &page["events"][0];
    assert_eq!(event["jti"], jti);
    assert_eq!(event["owners"], "biz tech");
    assert_eq!(event["detail"], serde_json::json!({"kind": "jwt", "key_id": header["kid"]}));
}

#[tokio::test]
async fn es256_attestation_with_explicit_audience_scope_and_ttl() {
    let Some(app) = spawn_app().await else { return };
    let attestation = app.ec.token(EC_SUBJECT, app.now());
    let body = app
        .exchange_ok(
            &attestation,
            &[("audience", "docs-api"), ("scope", "search:write docs:read"), ("requested_ttl", "900")],
        )
        .await;
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "docs:read search:write");
    let (_, claims) = parts(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "docs-api");
    assert_eq!(claims["sub"], EC_SUBJECT, "prefix grant covers the workload");
    assert_eq!(claims["system"], "indexer");
    verify_with_jwks(&app, body["access_token"].as_str().unwrap()).await;
}

#[tokio::test]
async fn requested_jwt_type_is_echoed_and_id_token_subjects_are_accepted() {
    let Some(app) = spawn_app().await else { return };
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let response = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:id_token"),
            ("subject_token", attestation.as_str()),
            ("requested_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");
}

#[tokio::test]
async fn reusable_issuer_accepts_the_same_token_twice() {
    let Some(app) = spawn_app().await else { return };
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let first = app.exchange_ok(&attestation, &[]).await;
    let second = app.exchange_ok(&attestation, &[]).await;
    assert_ne!(
        parts(first["access_token"].as_str().unwrap()).1["jti"],
        parts(second["access_token"].as_str().unwrap()).1["jti"]
    );
}

#[tokio::test]
async fn expiry_never_passes_the_pilot_end() {
    let Some(app) = spawn_app().await else { return };
    // The pilot ends 30 days after creation; move to 2 minutes before.
    app.clock.advance(std::time::Duration::from_secs(30 * 86400 - 120));
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let body = app.exchange_ok(&attestation, &[]).await;
    assert_eq!(body["expires_in"], 120);
}

#[tokio::test]
async fn concurrent_exchanges_each_get_a_committed_record() {
    let Some(app) = spawn_app().await else { return };
    let tasks = app.spawn_exchanges(40);
    let mut jtis = Vec::new();
    for t in tasks {
        let token = t.await.unwrap().expect("every exchange succeeds");
        jtis.push(parts(&token).1["jti"].as_str().unwrap().to_owned());
    }
    let recorded: std::collections::HashSet<_> =
        app.events("credential.issued").await.into_iter().filter_map(|e| e.jti).collect();
    for jti in &jtis {
        assert!(recorded.contains(jti), "{jti} was returned without an issuance record");
    }
    assert_eq!(app.credential_count().await, 40);
    // Concurrent appends kept one linear, verifiable chain.
    let auditor = app.admin_token(halflife::domain::model::Role::Auditor).await;
    let (_, report) = app.api(reqwest::Method::GET, "/v1/audit/verify", &auditor, None).await;
    assert_eq!(report["ok"], true, "{report}");
}

/// RFC 8707 `resource` and repeated `audience` are both targets: each must
/// be one the grant allows, a grant says how many one token may name
/// (`max_audiences`, 1 unless raised), and the token's `aud` is the one
/// target or the array of them. What MCP clients send (the tool server's
/// URL as `resource`) works.
#[tokio::test]
async fn resources_and_several_audiences_are_targets() {
    let catalog = default_catalog()
        + r#"
[[grants]]
id = "tools-agent"
system = "indexer"
issuer = "k8s"
subject = "system:serviceaccount:ai:tool-agent"
audiences = ["https://tools.example/mcp", "reports-api", "search-api"]
max_audiences = 2
max_ttl = "10m"
"#;
    let Some(app) = spawn_with(Options { catalog, ..Options::default() }).await else { return };
    let agent = "system:serviceaccount:ai:tool-agent";
    let token = || app.rsa.token(agent, app.now());

    let one = app.exchange_ok(&token(), &[("resource", "https://tools.example/mcp")]).await;
    let (_, claims) = parts(one["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "https://tools.example/mcp", "one target is a string");

    let two =
        app.exchange_ok(&token(), &[("resource", "https://tools.example/mcp"), ("audience", "reports-api")]).await;
    let (_, claims) = parts(two["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], json!(["reports-api", "https://tools.example/mcp"]));
    let introspector = app.admin_token(halflife::domain::model::Role::Introspector).await;
    let introspected = app.introspect(&introspector, two["access_token"].as_str().unwrap()).await;
    assert_eq!(introspected["aud"], json!(["reports-api", "https://tools.example/mcp"]));
    let twice = app.exchange_ok(&token(), &[("audience", "reports-api"), ("audience", "search-api")]).await;
    assert_eq!(parts(twice["access_token"].as_str().unwrap()).1["aud"], json!(["reports-api", "search-api"]));

    for (extra, needle) in [
        (
            vec![("audience", "reports-api"), ("audience", "search-api"), ("resource", "https://tools.example/mcp")],
            "max_audiences",
        ),
        (vec![("resource", "https://elsewhere.example/mcp")], "https://elsewhere.example/mcp"),
        (vec![("resource", "not a uri")], "absolute URI"),
        (vec![("resource", "https://tools.example/mcp#frag")], "fragment"),
        (vec![("resource", "postgres:reports")], "postgres-login"),
    ] {
        let response = app.exchange(&token(), &extra).await;
        assert_eq!(response.status(), 400, "{needle}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_target", "{needle}: {body}");
        assert!(body["error_description"].as_str().unwrap().contains(needle), "{needle}: {body}");
    }
    // A grant without max_audiences allows one target per token.
    let body: Value = app
        .exchange(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api"), ("audience", "search-api")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"], "invalid_target", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("at most 1"), "{body}");
}

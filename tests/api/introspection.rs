//! RFC 7662 introspection and RFC 7009 revocation.

use halflife::domain::model::Role;
use serde_json::{Value, json};

use crate::helpers::*;
use halflife::clock::Clock;

#[tokio::test]
async fn introspection_reports_active_then_inactive_after_revocation() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Introspector).await;
    let body =
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[("scope", "reports:read reports:write")]).await;
    let token = body["access_token"].as_str().unwrap();
    let (_, claims) = parts(token);

    let active = app.introspect(&admin, token).await;
    assert_eq!(active["active"], true);
    for claim in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "system"] {
        assert_eq!(active[claim], claims[claim], "{claim}");
    }
    assert_eq!(active["scope"], "reports:read reports:write");

    // The holder revokes it with the token itself.
    let response = app.client.post(app.url("/oauth2/revoke")).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.introspect(&admin, token).await, json!({"active": false}));

    let revoked = app.events("credential.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].jti.as_deref(), claims["jti"].as_str());

    // Revoking again, or revoking garbage, is still 200 and changes nothing.
    for t in [token, "garbage", "a.b.c"] {
        let response = app.client.post(app.url("/oauth2/revoke")).form(&[("token", t)]).send().await.unwrap();
        assert_eq!(response.status(), 200, "{t}");
    }
}

#[tokio::test]
async fn expired_unknown_malformed_and_foreign_tokens_are_exactly_inactive() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let token = body["access_token"].as_str().unwrap().to_owned();

    let Some(other) = spawn_app().await else { return };
    let foreign = other.exchange_ok(&other.rsa.token(RSA_SUBJECT, other.now()), &[]).await;
    let (head, _) = token.rsplit_once('.').unwrap();
    for t in [
        "not-a-token",
        "",
        foreign["access_token"].as_str().unwrap(),
        &format!("{head}.AAAA"),
        &app.rsa.token(RSA_SUBJECT, app.now()),
    ] {
        let response = app
            .client
            .post(app.url("/oauth2/introspect"))
            .bearer_auth(&admin)
            .form(&[("token", t)])
            .send()
            .await
            .unwrap();
        if t.is_empty() {
            assert_eq!(response.status(), 400);
            continue;
        }
        assert_eq!(response.json::<Value>().await.unwrap(), json!({"active": false}), "{t}");
    }

    assert_eq!(app.introspect(&admin, &token).await["active"], true);
    app.clock.advance(std::time::Duration::from_secs(301));
    assert_eq!(app.introspect(&admin, &token).await, json!({"active": false}));
}

#[tokio::test]
async fn introspection_requires_an_authorised_caller() {
    let Some(app) = spawn_app().await else { return };
    let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let token = body["access_token"].as_str().unwrap();

    let anonymous = app.client.post(app.url("/oauth2/introspect")).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));

    // A workload's own access token is no admin credential: 403, recorded.
    let as_workload = app
        .client
        .post(app.url("/oauth2/introspect"))
        .bearer_auth(token)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(as_workload.status(), 403);
    assert_eq!(app.events("access.denied").await.len(), 1);

    let auditor = app.admin_token(Role::Auditor).await;
    let forbidden = app
        .client
        .post(app.url("/oauth2/introspect"))
        .bearer_auth(&auditor)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    for role in [Role::Introspector, Role::Operator, Role::Admin] {
        let admin = app.admin_token(role).await;
        assert_eq!(app.introspect(&admin, token).await["active"], true, "{role}");
    }
}

#[tokio::test]
async fn an_owner_departing_in_another_process_makes_the_systems_credentials_inactive_within_the_sync_interval() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Introspector).await;
    let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(app.introspect(&admin, token).await["active"], true);

    // An operator applies a catalog in which the technical owner departed,
    // from another process's connection, as `halflife apply` would.
    let catalog = default_catalog().replacen(
        "email = \"tech@example.com\"",
        "email = \"tech@example.com\"\nstatus = \"departed\"",
        1,
    );
    let path = app.dir.path().join("departed.toml");
    std::fs::write(&path, catalog).unwrap();
    let store = halflife::store::open(&halflife::store::OpenOptions {
        url: app.db_url(),
        busy_timeout: std::time::Duration::from_secs(5),
        max_connections: 1,
        auto_migrate: false,
        application_name: "halflife test".into(),
    })
    .await
    .unwrap()
    .store;
    let config = halflife::config::Config::from_toml(&format!(
        "[dev]\nenabled = true\n[[issuers]]\nname = \"k8s\"\nissuer = \"{RSA_ISS}\"\njwks_file = \"x\"\naudience = \"{AUD}\"\n[[issuers]]\nname = \"spire\"\nissuer = \"{EC_ISS}\"\njwks_file = \"y\"\naudience = \"{AUD}\"\n"
    ))
    .unwrap();
    let report =
        halflife::app::apply_file(store.as_ref(), &config, &path, "test", app.clock.now(), false).await.unwrap();
    assert_eq!(report.updated, vec!["owner/tech".to_owned()]);

    // The broker sees the change at its next check (database.sync_interval
    // is 100ms here); on PostgreSQL a notification usually brings it sooner.
    let inactive = eventually(std::time::Duration::from_secs(3), || async {
        app.introspect(&admin, token).await == json!({"active": false})
    })
    .await;
    assert!(inactive, "the departed owner's credentials stayed active");
    let response = app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "access_denied");
    assert!(body["error_description"].as_str().unwrap().contains("departed"), "{body}");
}

/// After a restart the credential index is rebuilt from the database in the
/// background; whether a lookup comes before, during or after that load,
/// tokens issued before the restart are active and revocations hold.
#[tokio::test]
async fn tokens_issued_before_a_restart_stay_active_and_their_revocations_hold() {
    let Some(app) = spawn_app().await else { return };
    let mut tokens = Vec::new();
    for _ in 0..6 {
        let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    let revoked_before = tokens.pop().unwrap();
    let response = app.client.post(app.url("/oauth2/revoke")).form(&[("token", &revoked_before)]).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let app = app.restart().await;
    let admin = app.admin_token(Role::Admin).await;
    assert_eq!(app.introspect(&admin, &revoked_before).await, json!({"active": false}));
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(app.introspect(&admin, token).await["active"], true, "token {i} after the restart");
        if i % 2 == 0 {
            let jti = parts(token).1["jti"].as_str().unwrap().to_owned();
            let (status, body) =
                app.api(reqwest::Method::POST, "/v1/revoke", &admin, Some(json!({"jti": jti, "reason": "test"}))).await;
            assert_eq!((status, &body["revoked"]), (200, &json!(1)), "{body}");
        }
    }
    // Read each several times: the background load must not resurrect any.
    for _ in 0..5 {
        for (i, token) in tokens.iter().enumerate() {
            let active = app.introspect(&admin, token).await["active"] == true;
            assert_eq!(active, i % 2 == 1, "token {i}");
        }
    }
}

/// Standard OAuth client authentication at introspection and revocation
/// (RFC 7662 §2.1, RFC 6749 §2.3.1): the admin token is the client secret
/// and its name (or id) the client id, sent with HTTP Basic or in the form.
/// Bearer keeps working; a wrong pair is 401 invalid_client with a Basic
/// challenge; two methods at once are 400; the roles are the same.
#[tokio::test]
async fn introspection_accepts_client_secret_basic_and_post() {
    use base64::Engine;
    let Some(app) = spawn_app().await else { return };
    let (record, secret) = {
        use secrecy::ExposeSecret;
        let (record, token) = halflife::broker::admin::create_admin_token(
            app.broker.admin_tokens.as_ref(),
            halflife::domain::model::Role::Introspector,
            "reports api",
            halflife::broker::admin::DEFAULT_ADMIN_TOKEN_TTL,
            "test",
            app.clock.now(),
        )
        .await
        .unwrap();
        (record, token.expose_secret().to_owned())
    };
    let token =
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await["access_token"].as_str().unwrap().to_owned();
    let basic = |id: &str, secret: &str| {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        )
    };
    let post = |auth: Option<String>, form: Vec<(&str, &str)>| {
        let mut request = app.client.post(app.url("/oauth2/introspect")).form(&form);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    for (auth, form) in [
        (Some(basic("reports api", &secret)), vec![("token", token.as_str())]),
        (Some(basic(&record.id, &secret)), vec![("token", token.as_str())]),
        (None, vec![("token", token.as_str()), ("client_id", "reports api"), ("client_secret", secret.as_str())]),
        (Some(format!("Bearer {secret}")), vec![("token", token.as_str())]),
    ] {
        let response = post(auth, form).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap()["active"], true);
    }
    for (auth, form) in [
        (Some(basic("someone else", &secret)), vec![("token", token.as_str())]),
        (Some(basic("reports api", "hla_wrong")), vec![("token", token.as_str())]),
        (None, vec![("token", token.as_str()), ("client_id", "reports api"), ("client_secret", "hla_wrong")]),
        (Some("Basic !!!".to_owned()), vec![("token", token.as_str())]),
    ] {
        let response = post(auth, form).await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Basic realm=\"halflife\"");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_client");
        refused_one();
    }
    let both = post(
        Some(basic("reports api", &secret)),
        vec![("token", token.as_str()), ("client_id", "reports api"), ("client_secret", secret.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(both.status(), 400);
    let none = post(None, vec![("token", token.as_str())]).await.unwrap();
    assert_eq!(none.status(), 401);
    // An auditor may not introspect, however it authenticates.
    let auditor = app.admin_token(halflife::domain::model::Role::Auditor).await;
    let refused = post(Some(basic("test", &auditor)), vec![("token", token.as_str())]).await.unwrap();
    assert_eq!(refused.status(), 403);
    refused_one();
    // Revocation takes the same client authentication, and still needs none.
    let revoke = app
        .client
        .post(app.url("/oauth2/revoke"))
        .header("authorization", basic("reports api", "hla_wrong"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 401);
    let revoke = app
        .client
        .post(app.url("/oauth2/revoke"))
        .header("authorization", basic("reports api", &secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    assert_eq!(app.introspect(&secret, &token).await, json!({"active": false}));
    let meta: Value =
        app.client.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        meta["introspection_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(meta.get("tls_client_certificate_bound_access_tokens"), None, "no mTLS listener here: {meta}");
    let cc =
        app.client.post(app.url("/oauth2/token")).form(&[("grant_type", "client_credentials")]).send().await.unwrap();
    let body: Value = cc.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    assert!(body["error_description"].as_str().unwrap().contains("none configured"), "{body}");
    report_refused("hostile");
}

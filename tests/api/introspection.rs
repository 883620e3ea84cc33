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

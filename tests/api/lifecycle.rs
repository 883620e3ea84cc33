//! Systems, owners and automatic revocation, driven by the manual clock:
//! nothing outlives its pilot or its owner, and no test sleeps.

use std::time::Duration;

use halflife::clock::Clock;
use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const DAY: Duration = Duration::from_secs(86400);

fn at(app: &TestApp, after: Duration) -> String {
    halflife::domain::rfc3339(app.clock.now() + after)
}

/// An owner pair and a sandbox system of their own, via the API.
async fn other_system(app: &TestApp, operator: &str, id: &str, ends_in: Duration) {
    for owner in [format!("{id}-biz"), format!("{id}-tech")] {
        let (status, body) = app
            .api(
                Method::POST,
                "/v1/owners",
                operator,
                Some(json!({"id": owner, "display_name": owner, "email": format!("{owner}@example.com")})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = app
        .api(
            Method::POST,
            "/v1/systems",
            operator,
            Some(json!({"id": id, "name": id, "purpose": "test", "business_owner": format!("{id}-biz"),
                        "technical_owner": format!("{id}-tech"), "tier": "sandbox", "pilot_ends_at": at(app, ends_in)})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn state_of(app: &TestApp, operator: &str, id: &str) -> Value {
    let (status, body) = app.api(Method::GET, &format!("/v1/systems/{id}"), operator, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn ended_pilot_is_suspended_and_its_credentials_revoked_by_one_pass() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[("requested_ttl", "900")]).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    // The operator pulls the pilot end in: the credential would outlive it.
    let (status, body) = app
        .api(
            Method::PATCH,
            "/v1/systems/summarizer",
            &operator,
            Some(json!({"pilot_ends_at": at(&app, Duration::from_secs(300))})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    app.clock.advance(Duration::from_secs(301));
    // Before the reaper runs, the exchange path already refuses.
    let response = app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["error"], "access_denied");
    assert!(refused["error_description"].as_str().unwrap().contains("pilot ended"), "{refused}");

    let report = app.reap().await;
    assert_eq!(report.suspended.len(), 1, "{report:?}");
    assert_eq!(report.suspended[0].0, "summarizer");
    assert_eq!(report.revoked, 1);
    let (_, events) = app.api(Method::GET, "/v1/audit/events?kind=system.suspended", &operator, None).await;
    assert_eq!(events["events"][0]["detail"]["revoked"], 1, "the revocation count is recorded");
    assert_eq!(app.introspect(&introspector, &token).await, json!({"active": false}));
    let system = state_of(&app, &operator, "summarizer").await;
    assert_eq!(system["state"], "suspended");
    assert_eq!(system["tier"], "pilot", "a suspended pilot stays recognisably a pilot");
    assert!(system["suspended_reason"].as_str().unwrap().contains("pilot ended"));

    let suspended = app.events("system.suspended").await;
    assert_eq!(suspended.len(), 1);
    assert!(suspended[0].reason.as_deref().unwrap().contains("pilot ended"));
    let response = app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let refused: Value = response.json().await.unwrap();
    assert!(refused["error_description"].as_str().unwrap().contains("suspended"), "{refused}");

    // Idempotent: a second pass changes nothing.
    let again = app.reap().await;
    assert!(again.suspended.is_empty());
    assert_eq!(app.events("system.suspended").await.len(), 1);
}

#[tokio::test]
async fn a_departed_owner_suspends_exactly_their_systems() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    other_system(&app, &operator, "bystander", 60 * DAY).await;
    let token =
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await["access_token"].as_str().unwrap().to_owned();
    let (status, body) =
        app.api(Method::POST, "/v1/owners/tech/depart", &operator, Some(json!({"reason": "left"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "departed");

    // At once, not at the next tick: both of tech's systems are suspended,
    // their credentials inactive, new exchanges refused saying why.
    for id in ["indexer", "summarizer"] {
        let system = state_of(&app, &operator, id).await;
        assert_eq!(system["state"], "suspended", "{system}");
        assert!(system["suspended_reason"].as_str().unwrap().contains("departed"), "{system}");
    }
    assert_eq!(state_of(&app, &operator, "bystander").await["state"], "active");
    assert_eq!(app.introspect(&introspector, &token).await, json!({"active": false}));
    let refused: Value = app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await.json().await.unwrap();
    assert_eq!(refused["error"], "access_denied");
    assert!(refused["error_description"].as_str().unwrap().contains("suspended"), "{refused}");
    let (_, events) =
        app.api(Method::GET, "/v1/audit/events?kind=system.suspended&system=summarizer", &operator, None).await;
    assert_eq!(events["events"][0]["detail"]["revoked"], 1, "the revocation count is recorded");
    assert_eq!(app.events("owner.departed").await.len(), 1);
    assert!(app.reap().await.suspended.is_empty(), "nothing left for the reaper");
}

#[tokio::test]
async fn a_lapsed_recertification_suspends_that_owners_systems_only() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    // Thirty days in, a second pair of owners arrives with their own system.
    app.clock.advance(30 * DAY);
    other_system(&app, &operator, "newcomer", 80 * DAY).await;
    // Catalog owners were attested for 90 days from the start; recertify one
    // of the newcomers' owners to show recertification extends attestation.
    let (status, owner) = app.api(Method::POST, "/v1/owners/newcomer-biz/recertify", &operator, None).await;
    assert_eq!(status, 200, "{owner}");
    app.clock.advance(60 * DAY + Duration::from_secs(1));
    let report = app.reap().await;
    let suspended: Vec<_> = report.suspended.iter().map(|(s, _)| s.as_str()).collect();
    assert!(suspended.contains(&"indexer"), "{report:?}");
    assert!(!suspended.contains(&"newcomer"), "{report:?}");
    let indexer = report.suspended.iter().find(|(s, _)| s == "indexer").unwrap();
    assert!(indexer.1.contains("attestation lapsed"), "{indexer:?}");
    assert_eq!(app.events("owner.lapsed").await.len(), 2, "biz and tech lapse, each recorded once");
    app.reap().await;
    assert_eq!(app.events("owner.lapsed").await.len(), 2);
}

#[tokio::test]
async fn revoking_a_system_writes_the_same_whatever_it_holds() {
    for outstanding in [10i64, 10_000] {
        let Some(app) = spawn_app().await else { return };
        let operator = app.admin_token(Role::Operator).await;
        let introspector = app.admin_token(Role::Introspector).await;
        let body = app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api")]).await;
        let token = body["access_token"].as_str().unwrap().to_owned();
        let exp = app.now() + 600;
        // PostgreSQL keeps ids as bytes (`halflife_id`).
        let jti = if postgres() { "halflife_id('bulk-' || i)" } else { "'bulk-' || i" };
        app.sql(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO credentials (jti, kind, system_id, grant_id, workload_id, audience, scopes, iat, exp) \
             SELECT {jti}, 'jwt', 'indexer', 'indexer-spire', \
             (SELECT id FROM workloads WHERE issuer = 'spire' AND subject = '{EC_SUBJECT}'), 'docs-api', '', {}, {exp} FROM n",
            outstanding - 1,
            app.now()
        ))
        .await;
        // Counted as issuance counts them, in the same write.
        app.sql(&format!(
            "INSERT INTO credential_counts (system_id, exp, n) VALUES ('indexer', {exp}, {})",
            outstanding - 1
        ))
        .await;
        let writes_before =
            app.scalar("SELECT COUNT(*) FROM jobs").await + app.scalar("SELECT COUNT(*) FROM audit_events").await;

        let (status, body) = app
            .api(Method::POST, "/v1/systems/indexer/revoke", &operator, Some(json!({"reason": "key leak drill"})))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["revoked"], outstanding, "the count of credentials made inactive");
        // The request path touched no credential row: one epoch, one job,
        // one event, whatever the number of credentials.
        assert_eq!(app.scalar("SELECT COUNT(*) FROM credentials WHERE revoked_at IS NOT NULL").await, 0);
        let writes_after =
            app.scalar("SELECT COUNT(*) FROM jobs").await + app.scalar("SELECT COUNT(*) FROM audit_events").await;
        assert_eq!(writes_after - writes_before, 2, "one job and one event for {outstanding} credentials");
        assert_eq!(
            app.introspect(&introspector, &token).await,
            json!({"active": false}),
            "inactive the moment the call returns"
        );

        // The background job then marks every row.
        app.reap().await;
        assert_eq!(app.scalar("SELECT COUNT(*) FROM credentials WHERE revoked_at IS NOT NULL").await, outstanding);
        let (_, jobs) = app.api(Method::GET, "/v1/jobs?all=true", &operator, None).await;
        assert_eq!(jobs["jobs"][0]["status"], "done", "{jobs}");
    }
}

#[tokio::test]
async fn the_promotion_gate_names_each_missing_condition() {
    let Some(app) = spawn_app().await else { return };
    // Promotion is approved by a person, never by an automation token.
    let operator = app.person_token("release@corp.example", &["hl-operators"]).await;
    let owner_operator = app.person_token("tech@example.com", &["hl-operators"]).await;

    // summarizer is a pilot without a data classification.
    let (status, body) = app.api(Method::POST, "/v1/systems/summarizer/promote", &operator, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "promotion_refused");
    assert!(body["error_description"].as_str().unwrap().contains("data_classification"), "{body}");

    let (status, _) = app
        .api(Method::PATCH, "/v1/systems/summarizer", &operator, Some(json!({"data_classification": "internal"})))
        .await;
    assert_eq!(status, 200);
    // An owner cannot approve their own system.
    let (status, body) = app.api(Method::POST, "/v1/systems/summarizer/promote", &owner_operator, None).await;
    assert_eq!(status, 409);
    assert!(body["error_description"].as_str().unwrap().contains("approver"), "{body}");

    // Without grants the gate refuses too.
    let (status, body) = app.api(Method::DELETE, "/v1/systems/summarizer/grants/summarizer-k8s", &operator, None).await;
    assert_eq!((status, &body["revoked"]), (200, &json!(0)), "{body}");
    let (status, body) =
        app.api(Method::DELETE, "/v1/systems/summarizer/grants?id=summarizer-dev", &operator, None).await;
    assert_eq!((status, &body["revoked"]), (200, &json!(0)), "{body}");
    let (status, body) = app.api(Method::POST, "/v1/systems/summarizer/promote", &operator, None).await;
    assert_eq!(status, 409);
    assert!(body["error_description"].as_str().unwrap().contains("grants"), "{body}");
    let (status, body) = app
        .api(
            Method::POST,
            "/v1/systems/summarizer/grants",
            &operator,
            Some(json!({"id": "summarizer-k8s-2", "issuer": "k8s", "subject": RSA_SUBJECT,
                        "audiences": ["reports-api"], "scopes": ["reports:read"], "max_ttl": "10m"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = app.api(Method::POST, "/v1/systems/summarizer/promote", &operator, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["system"]["tier"], "production");
    assert_eq!(body["system"]["pilot_ends_at"], Value::Null);
    assert!(body["gate"].as_array().unwrap().iter().all(|c| c["passed"] == true));
    let promoted = app.events("system.promoted").await;
    assert_eq!(promoted.iter().filter(|e| e.system_id.as_deref() == Some("summarizer")).count(), 1);
    assert_eq!(app.events("system.promotion_refused").await.len(), 3);

    // Sandbox → pilot needs an end date.
    other_system(&app, &operator, "sandboxed", 10 * DAY).await;
    let (status, body) = app.api(Method::POST, "/v1/systems/sandboxed/promote", &operator, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["system"]["tier"], "pilot");
}

#[tokio::test]
async fn reinstatement_keeps_old_credentials_revoked() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let old =
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await["access_token"].as_str().unwrap().to_owned();

    let (status, body) = app
        .api(Method::POST, "/v1/systems/summarizer/suspend", &operator, Some(json!({"reason": "incident 42"})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 1);
    assert_eq!(app.introspect(&introspector, &old).await, json!({"active": false}));

    let (status, body) = app.api(Method::POST, "/v1/systems/summarizer/reinstate", &operator, None).await;
    assert_eq!(status, 400, "a pilot needs a new end date: {body}");
    assert_eq!(body["field"], "pilot_ends_at");
    let (status, body) = app
        .api(
            Method::POST,
            "/v1/systems/summarizer/reinstate",
            &operator,
            Some(json!({"pilot_ends_at": at(&app, 20 * DAY)})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active");

    assert_eq!(app.introspect(&introspector, &old).await, json!({"active": false}), "old credentials stay revoked");
    let new =
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.introspect(&introspector, &new).await["active"], true);
    assert_eq!(app.events("system.reinstated").await.len(), 1);
}

#[tokio::test]
async fn revoking_a_system_counts_only_what_is_still_active() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let revoke_system = async || {
        let (status, body) =
            app.api(Method::POST, "/v1/systems/summarizer/revoke", &operator, Some(json!({"reason": "drill"}))).await;
        assert_eq!(status, 200, "{body}");
        body["revoked"].as_i64().unwrap()
    };
    // Two that expire (5 minutes), then three that do not yet.
    for _ in 0..2 {
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    }
    app.clock.advance(Duration::from_secs(301));
    let mut live = Vec::new();
    for _ in 0..3 {
        let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[("requested_ttl", "900")]).await;
        live.push(body["access_token"].as_str().unwrap().to_owned());
    }
    let jti = parts(&live[0]).1["jti"].as_str().unwrap().to_owned();
    let (status, body) =
        app.api(Method::POST, "/v1/revoke", &operator, Some(json!({"jti": jti, "reason": "lost"}))).await;
    assert_eq!((status, &body["revoked"]), (200, &json!(1)), "{body}");
    // Revoking it again changes nothing, here or in the system's count.
    let (_, body) = app.api(Method::POST, "/v1/revoke", &operator, Some(json!({"jti": jti, "reason": "lost"}))).await;
    assert_eq!(body["revoked"], 0, "{body}");

    assert_eq!(revoke_system().await, 2, "neither the expired nor the one revoked by jti");
    assert_eq!(revoke_system().await, 0, "a second revocation covers nothing new");
    // Marking the rows afterwards does not count them again.
    app.reap().await;
    app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    assert_eq!(revoke_system().await, 1, "only the credential issued since");

    // Counts past their expiry are pruned; the live ones stay.
    app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    app.clock.advance(Duration::from_secs(301));
    app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let before = app.scalar("SELECT COUNT(*) FROM credential_counts").await;
    app.broker.credentials.prune_expired(app.clock.now()).await.unwrap();
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credential_counts").await, 1, "{before} rows before pruning");
    assert_eq!(revoke_system().await, 1);
}

#[tokio::test]
async fn revocation_by_workload_jti_and_owner_reports_counts() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    let jti = parts(&tokens[0]).1["jti"].as_str().unwrap().to_owned();
    let (status, body) =
        app.api(Method::POST, "/v1/revoke", &operator, Some(json!({"jti": jti, "reason": "lost"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 1);
    assert_eq!(app.introspect(&introspector, &tokens[0]).await["active"], false);
    assert_eq!(app.introspect(&introspector, &tokens[1]).await["active"], true);

    let (status, body) = app
        .api(
            Method::POST,
            "/v1/revoke",
            &operator,
            Some(json!({"issuer": "k8s", "subject": RSA_SUBJECT, "reason": "compromised pod"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 2, "the one revoked by jti is not counted twice");
    for t in &tokens {
        assert_eq!(app.introspect(&introspector, t).await["active"], false);
    }
    // New credentials for that workload are active again.
    let fresh = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    assert_eq!(app.introspect(&introspector, fresh["access_token"].as_str().unwrap()).await["active"], true);

    let ec = app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api")]).await;
    let (status, body) =
        app.api(Method::POST, "/v1/owners/biz/revoke", &operator, Some(json!({"reason": "audit"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 2, "{body}");
    assert_eq!(body["systems"], json!(["indexer", "summarizer"]));
    assert_eq!(app.introspect(&introspector, ec["access_token"].as_str().unwrap()).await["active"], false);

    let (status, body) = app.api(Method::POST, "/v1/revoke", &operator, Some(json!({"jti": "x"}))).await;
    assert_eq!(status, 400, "a reason is required: {body}");
    let (status, body) = app.api(Method::POST, "/v1/revoke", &operator, Some(json!({"reason": "x"}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "jti");
    assert!(app.events("credential.revoked").await.len() >= 4);
}

#[tokio::test]
async fn roles_are_enforced_and_refusals_recorded() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.admin_token(Role::Auditor).await;
    let introspector = app.admin_token(Role::Introspector).await;

    let (status, body) = app.api(Method::GET, "/v1/systems", &auditor, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["systems"].as_array().unwrap().len(), 2);
    let (status, _) =
        app.api(Method::POST, "/v1/systems/summarizer/revoke", &auditor, Some(json!({"reason": "x"}))).await;
    assert_eq!(status, 403, "auditor cannot revoke");
    let (status, _) = app.api(Method::GET, "/v1/systems", &introspector, None).await;
    assert_eq!(status, 403, "introspector cannot list systems");
    let workload = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let (status, _) = app.api(Method::GET, "/v1/systems", workload["access_token"].as_str().unwrap(), None).await;
    assert_eq!(status, 403, "a workload token gets 403 on admin routes");
    let (status, _) = app.api(Method::GET, "/v1/systems", "hla_not-a-token", None).await;
    assert_eq!(status, 401);
    let denied = app.events("access.denied").await;
    assert_eq!(denied.len(), 3, "{denied:?}");

    let (status, _) =
        app.api(Method::POST, "/v1/admin-tokens", &auditor, Some(json!({"role": "admin", "name": "x"}))).await;
    assert_eq!(status, 403, "only admins create admin tokens");
    let admin = app.admin_token(Role::Admin).await;
    let (status, body) =
        app.api(Method::POST, "/v1/admin-tokens", &admin, Some(json!({"role": "auditor", "name": "eve"}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = app.api(Method::GET, "/v1/owners", body["token"].as_str().unwrap(), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    for (body, field) in [
        (
            json!({"id": "Bad Id", "name": "x", "purpose": "y", "business_owner": "biz", "technical_owner": "tech", "pilot_ends_at": at(&app, DAY)}),
            "id",
        ),
        (
            json!({"id": "ok", "name": "x", "purpose": "y", "business_owner": "biz", "technical_owner": "tech"}),
            "pilot_ends_at",
        ),
        (
            json!({"id": "ok", "name": "x", "purpose": "y", "business_owner": "biz", "technical_owner": "tech", "pilot_ends_at": at(&app, 91 * DAY)}),
            "pilot_ends_at",
        ),
        (
            json!({"id": "ok", "name": "x", "purpose": "y", "business_owner": "biz", "technical_owner": "tech", "pilot_ends_at": "tomorrow"}),
            "pilot_ends_at",
        ),
        (
            json!({"id": "ok", "name": "x", "purpose": "y", "business_owner": "biz", "technical_owner": "tech", "tier": "production"}),
            "tier",
        ),
        (
            json!({"id": "ok", "name": " ", "purpose": "y", "business_owner": "biz", "technical_owner": "tech", "pilot_ends_at": at(&app, DAY)}),
            "name",
        ),
    ] {
        let (status, response) = app.api(Method::POST, "/v1/systems", &operator, Some(body)).await;
        assert_eq!(status, 400, "{response}");
        assert_eq!(response["field"], field, "{response}");
    }
    let (status, response) =
        app.api(Method::POST, "/v1/systems", &operator, Some(json!({"id": "ok", "nmae": "typo"}))).await;
    assert_eq!(status, 400);
    assert!(response["error_description"].as_str().unwrap().contains("nmae"), "{response}");
    let (status, response) = app
        .api(
            Method::POST,
            "/v1/systems",
            &operator,
            Some(json!({"id": "ok", "name": "x", "purpose": "y",
            "business_owner": "nobody", "technical_owner": "tech", "pilot_ends_at": at(&app, DAY)})),
        )
        .await;
    assert_eq!(status, 404, "{response}");
    assert!(response["error_description"].as_str().unwrap().contains("nobody"));
    let (status, _) = app
        .api(
            Method::POST,
            "/v1/systems/summarizer/grants",
            &operator,
            Some(json!({"id": "g", "issuer": "nowhere",
            "subject": "x", "audiences": ["a"], "max_ttl": "5m"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app.api(Method::GET, "/v1/systems/nope", &operator, None).await;
    assert_eq!(status, 404);
    let response = app.client.post(app.url("/v1/systems")).bearer_auth(&operator).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 415);
}

#[tokio::test]
async fn suspension_racing_exchanges_leaves_nothing_active() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    const ROUNDS: usize = 4;
    let mut active_after = 0;
    for round in 0..ROUNDS {
        let tasks = app.spawn_exchanges(60);
        let (status, body) = app
            .api(Method::POST, "/v1/systems/indexer/suspend", &operator, Some(json!({"reason": "race drill"})))
            .await;
        assert_eq!(status, 200, "{body}");
        let mut issued = Vec::new();
        for t in tasks {
            if let Some(token) = t.await.unwrap() {
                issued.push(token);
            }
        }
        for token in &issued {
            if app.introspect(&introspector, token).await != json!({"active": false}) {
                active_after += 1;
            }
        }
        // And nothing is issued after the suspension returned.
        let response = app.exchange(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api")]).await;
        assert_eq!(response.status(), 400, "round {round}");

        // Reinstating brings none of them back: each was either committed
        // before the suspension (under its epoch) or refused at commit.
        let (status, body) = app.api(Method::POST, "/v1/systems/indexer/reinstate", &operator, None).await;
        assert_eq!(status, 200, "{body}");
        for token in &issued {
            if app.introspect(&introspector, token).await != json!({"active": false}) {
                active_after += 1;
            }
        }
        let fresh = app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api")]).await;
        assert_eq!(app.introspect(&introspector, fresh["access_token"].as_str().unwrap()).await["active"], true);
    }
    scoreboard("revocation", ROUNDS, active_after);
    assert_eq!(active_after, 0, "credentials active after their system was suspended");
}

#[tokio::test]
async fn notices_warn_ahead_once_and_failing_webhooks_are_retried_and_visible() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(tokio::sync::Mutex::new(Vec::<Value>::new()));
    let (c, r) = (calls.clone(), received.clone());
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (c, r) = (c.clone(), r.clone());
            async move {
                // Fails the first four deliveries.
                if c.fetch_add(1, Ordering::SeqCst) < 4 {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                r.lock().await.push(body);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    let Some(app) = spawn_with(Options {
        extra_config: format!("[lifecycle]\nnotice_window = \"7d\"\nwebhook_url = \"{hook_url}\"\n"),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let operator = app.admin_token(Role::Operator).await;
    app.clock.advance(24 * DAY); // summarizer's pilot ends in 6 days
    let report = app.reap().await;
    assert_eq!(report.notices, 1, "{report:?}");
    assert_eq!(app.reap().await.notices, 0, "a notice is recorded once");
    let (_, expiring) = app.api(Method::GET, "/v1/expiring", &operator, None).await;
    assert_eq!(expiring["deadlines"][0]["kind"], "pilot.ending");
    assert_eq!(expiring["deadlines"][0]["subject_id"], "summarizer");

    // Delivery failed on the first pass; retries follow the backoff, driven
    // by the clock. After three failures operators see the job as failing.
    for _ in 0..3 {
        app.clock.advance(Duration::from_secs(3600));
        app.reap().await;
    }
    let (_, jobs) = app.api(Method::GET, "/v1/jobs", &operator, None).await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["kind"], "webhook");
    assert_eq!(job["status"], "failing", "{jobs}");
    assert!(job["last_error"].as_str().unwrap().contains("500"));
    app.clock.advance(Duration::from_secs(3600));
    app.reap().await;
    let (_, jobs) = app.api(Method::GET, "/v1/jobs", &operator, None).await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "delivered: {jobs}");
    let delivered = received.lock().await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["notice"]["kind"], "pilot.ending");
}

#[tokio::test]
async fn revocation_jobs_resume_after_a_restart() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, _) =
        app.api(Method::POST, "/v1/systems/summarizer/revoke", &operator, Some(json!({"reason": "drill"}))).await;
    assert_eq!(status, 200);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'pending'").await, 1);

    // The broker stops before the job ran; a new process picks it up.
    let app = app.restart().await;
    let introspector = app.admin_token(Role::Introspector).await;
    assert_eq!(app.introspect(&introspector, &token).await, json!({"active": false}), "the epoch survived the restart");
    let report = app.reap().await;
    assert_eq!(report.jobs_done, 1, "{report:?}");
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credentials WHERE revoked_at IS NOT NULL").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'pending'").await, 0);
}

/// The commit-time check, deterministically: an issuance decided while the
/// system was active reaches the store after a suspension committed.
#[tokio::test]
async fn an_issuance_decided_before_a_suspension_cannot_commit_after_it() {
    use halflife::store::{AuditEvent, IssueOutcome, Outcome, RequestMeta};
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let (status, _) =
        app.api(Method::POST, "/v1/systems/indexer/suspend", &operator, Some(json!({"reason": "drill"}))).await;
    assert_eq!(status, 200);
    let now = app.clock.now();
    let issuance = halflife::store::Issuance {
        jti: "late-jti".into(),
        kind: halflife::domain::values::CredentialKind::Jwt,
        system_id: halflife::domain::values::SystemId::parse("indexer").unwrap(),
        grant_id: halflife::domain::values::GrantId::parse("indexer-spire").unwrap(),
        grant_version: 0,
        issuer: "spire".into(),
        subject: EC_SUBJECT.into(),
        principal: None,
        audience: "docs-api".into(),
        scopes: String::new(),
        iat: now,
        exp: now + Duration::from_secs(300),
        replay: Vec::new(),
        secret_hash: None,
        db_role: None,
        approval: None,
        event: AuditEvent::new("credential.issued", Outcome::Success, now, &RequestMeta::default()),
    };
    let outcome = app.broker.log.record_issuance(issuance).await.unwrap();
    assert_eq!(outcome, IssueOutcome::SystemStopped);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credentials WHERE jti = 'late-jti'").await, 0);
    let denied = app.events("credential.denied").await;
    assert!(denied.last().unwrap().reason.as_deref().unwrap().contains("stopped operating"));
}

/// Workload identities became rows of their own that credentials name by id
/// (SQLite migration 0014, PostgreSQL 0010). Credentials stored before that
/// upgrade keep their workloads: lookups, listings, opaque secrets and a
/// workload revocation recorded before it still see them, a workload
/// revoked after it covers exactly its own credentials, and each identity
/// is stored once however many credentials it holds.
#[tokio::test]
async fn credentials_stored_before_workloads_were_split_out_keep_them() {
    use halflife::domain::values::SystemId;
    use halflife::store::{AuditEvent, Outcome, RequestMeta, RevokeTarget};

    let dir = tempfile::tempdir().unwrap();
    let Some(db) = TestDb::create(dir.path()).await else { return };
    db.migrate_before(dir.path(), 14, 10).await;
    let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let (iat, exp) = (now.unix_timestamp() - 60, now.unix_timestamp() + 600);
    let mut raw = db.raw().await;
    add_indexer_system(&mut raw).await;
    for statement in [
        // Three credentials of spire's sub-a (one an opaque secret), one of
        // spire's sub-b, whose workload was revoked through it, and one of
        // the same subject name from another issuer: ids 1 to 5.
        format!(
            "INSERT INTO credentials (jti, kind, system_id, grant_id, issuer, subject, audience, scopes, iat, exp, \
             secret_hash) VALUES \
             ('a1', 'jwt', 'indexer', 'g', 'spire', 'sub-a', 'docs-api', 'read', {iat}, {exp}, NULL), \
             ('a2', 'secret', 'indexer', 'g', 'spire', 'sub-a', 'docs-api', 'read write', {iat}, {exp}, 'h-a2'), \
             ('a3', 'jwt', 'indexer', 'g', 'spire', 'sub-a', 'docs-api', 'read', {iat}, {exp}, NULL), \
             ('b1', 'jwt', 'indexer', 'g', 'spire', 'sub-b', 'docs-api', 'read', {iat}, {exp}, NULL), \
             ('c1', 'jwt', 'indexer', 'g', 'k8s', 'sub-a', 'docs-api', 'read', {iat}, {exp}, NULL)"
        ),
        format!("INSERT INTO credential_counts (system_id, exp, n) VALUES ('indexer', {exp}, 4)"),
        "INSERT INTO workload_revocations (issuer, subject, revoked_through) VALUES ('spire', 'sub-b', 4)".to_owned(),
    ] {
        raw.execute(&statement).await.unwrap();
    }
    drop(raw);

    let store = open_store(&db).await;
    for (jti, revoked) in [("a1", false), ("a2", false), ("b1", true), ("c1", false)] {
        let record = store.credential(jti).await.unwrap().unwrap();
        assert_eq!(record.is_revoked(), revoked, "{jti}");
    }
    let system = SystemId::parse("indexer").unwrap();
    let listed: Vec<(String, String, String, String)> = store
        .outstanding_credentials(&system, now)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.jti, c.issuer, c.subject, c.scopes))
        .collect();
    let expected = [
        ("a1", "spire", "sub-a", "read"),
        ("a2", "spire", "sub-a", "read write"),
        ("a3", "spire", "sub-a", "read"),
        ("c1", "k8s", "sub-a", "read"),
    ]
    .map(|(j, i, s, sc)| (j.to_owned(), i.to_owned(), s.to_owned(), sc.to_owned()));
    assert_eq!(listed, expected, "b1 is revoked with its workload");
    let secret = store.secret_credential("h-a2").await.unwrap().unwrap();
    assert_eq!((secret.jti.as_str(), secret.subject.as_str()), ("a2", "sub-a"));
    let row = store.credential_row("c1").await.unwrap().unwrap();
    assert_eq!((row["issuer"].as_str(), row["subject"].as_str()), (Some("k8s"), Some("sub-a")), "{row}");

    // A known identity adds no row; a new one adds one.
    for (jti, subject) in [("a4", "sub-a"), ("d1", "sub-d")] {
        store.record_issuance(issuance(jti, "spire", subject, now)).await.unwrap();
    }
    let mut raw = db.raw().await;
    assert_eq!(raw.scalar("SELECT COUNT(*) FROM workloads").await, 4, "spire sub-a, sub-b, sub-d and k8s sub-a");
    let listed = store.outstanding_credentials(&system, now).await.unwrap();
    assert_eq!(listed.iter().map(|c| c.jti.as_str()).collect::<Vec<_>>(), ["a1", "a2", "a3", "c1", "a4", "d1"]);

    // Revoking spire's sub-a covers its four credentials, not k8s's sub-a.
    let target = RevokeTarget::Workload { issuer: "spire".into(), subject: "sub-a".into() };
    let meta = RequestMeta { request_id: None, source: None };
    let event = AuditEvent::new("workload.revoked", Outcome::Success, now, &meta);
    assert_eq!(store.revoke(&target, "compromised", event).await.unwrap().revoked, 4);
    let listed = store.outstanding_credentials(&system, now).await.unwrap();
    assert_eq!(listed.iter().map(|c| c.jti.as_str()).collect::<Vec<_>>(), ["c1", "d1"]);
    // The job that marks the rows walks them through the workload's id.
    let last = store.mark_revoked(&target, i64::MAX, 0, "compromised", now.unix_timestamp(), 2).await.unwrap();
    assert_eq!(last, Some(2), "the first page ends at the second of the workload's credentials");
    let last = store.mark_revoked(&target, i64::MAX, 2, "compromised", now.unix_timestamp(), 100).await.unwrap();
    assert_eq!(last, Some(6), "then a4, the fourth");
    assert_eq!(raw.scalar("SELECT COUNT(*) FROM credentials WHERE revoked_at IS NOT NULL").await, 4);
    assert_eq!(
        raw.scalar("SELECT COUNT(*) FROM credentials WHERE revoked_at IS NOT NULL AND jti IN ('a1', 'a2', 'a3', 'a4')")
            .await,
        4
    );
}

/// Owners `biz` and `tech` and their active pilot system `indexer`, as
/// rows (the schema of these tables is the same before and after the
/// upgrades tested here).
async fn add_indexer_system(raw: &mut RawDb) {
    for statement in [
        "INSERT INTO owners (id, display_name, email, status, attested_until, created_at, updated_at) VALUES \
         ('biz', 'Biz', 'biz@example.com', 'active', 1800000000, 0, 0), \
         ('tech', 'Tech', 'tech@example.com', 'active', 1800000000, 0, 0)",
        "INSERT INTO systems (id, name, purpose, business_owner, technical_owner, tier, state, created_at, updated_at) \
         VALUES ('indexer', 'Indexer', 'search', 'biz', 'tech', 'pilot', 'active', 0, 0)",
        "INSERT INTO grants (id, system_id, issuer, subject, audiences, scopes, default_scopes, kinds, max_ttl, \
         created_at, updated_at) VALUES ('g', 'indexer', 'spire', 'spiffe://prod.example/*', '[\"docs-api\"]', \
         '[\"read\"]', '[]', '[\"jwt\"]', 3600, 0, 0)",
    ] {
        raw.execute(statement).await.unwrap();
    }
}

/// A store opened (and migrated) on `db` as a server would open it.
async fn open_store(db: &TestDb) -> std::sync::Arc<dyn halflife::store::Backend> {
    let options = halflife::store::OpenOptions {
        url: db.url(),
        busy_timeout: Duration::from_secs(5),
        max_connections: 2,
        auto_migrate: true,
        application_name: "halflife-test".into(),
    };
    halflife::store::open(&options).await.unwrap().store
}

/// A store opened on `db` with system `indexer` added, and a connection
/// from outside it.
async fn store_with_indexer(db: &TestDb) -> (std::sync::Arc<dyn halflife::store::Backend>, RawDb) {
    let store = open_store(db).await;
    let mut raw = db.raw().await;
    add_indexer_system(&mut raw).await;
    (store, raw)
}

/// A JWT issued at `now` for ten minutes to workload (`issuer`, `subject`)
/// of system `indexer`, grant `g`.
fn issuance(jti: &str, issuer: &str, subject: &str, now: time::OffsetDateTime) -> halflife::store::Issuance {
    use halflife::domain::values::{CredentialKind, GrantId, SystemId};
    use halflife::store::{AuditEvent, Outcome, RequestMeta};

    let meta = RequestMeta { request_id: None, source: None };
    let mut event = AuditEvent::new("credential.issued", Outcome::Success, now, &meta);
    event.system_id = Some("indexer".into());
    event.jti = Some(jti.into());
    event.subject = Some(subject.into());
    halflife::store::Issuance {
        jti: jti.into(),
        kind: CredentialKind::Jwt,
        system_id: SystemId::parse("indexer").unwrap(),
        grant_id: GrantId::parse("g").unwrap(),
        grant_version: 0,
        issuer: issuer.into(),
        subject: subject.into(),
        principal: None,
        audience: "docs-api".into(),
        scopes: "read".into(),
        iat: now,
        exp: now + Duration::from_secs(600),
        replay: Vec::new(),
        secret_hash: None,
        db_role: None,
        approval: None,
        event,
    }
}

/// The writer remembers the ids of the workload identities and audit names
/// it stored, but only once their batch commits: a workload or name
/// inserted by a batch that then failed (here on a repeated jti) is not
/// known, so a later credential or event names its own row, not the row
/// that took its id in the meantime.
#[tokio::test]
async fn a_failed_batch_leaves_no_workload_or_name_behind() {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = TestDb::create(dir.path()).await else { return };
    let (store, mut raw) = store_with_indexer(&db).await;
    let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    store.record_issuance(issuance("j1", "spire", "first", now)).await.unwrap();
    // The same jti again, from a workload not stored before: the batch fails
    // on the credential, after inserting the workload, and rolls back.
    let failed = store.record_issuance(issuance("j1", "spire", "second", now)).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(raw.scalar("SELECT COUNT(*) FROM workloads").await, 1);
    store.record_issuance(issuance("j2", "spire", "third", now)).await.unwrap();
    store.record_issuance(issuance("j3", "spire", "second", now)).await.unwrap();
    let system = halflife::domain::values::SystemId::parse("indexer").unwrap();
    let listed: Vec<(String, String)> =
        store.outstanding_credentials(&system, now).await.unwrap().into_iter().map(|c| (c.jti, c.subject)).collect();
    let expected = [("j1", "first"), ("j2", "third"), ("j3", "second")].map(|(j, s)| (j.to_owned(), s.to_owned()));
    assert_eq!(listed, expected);
    assert_eq!(raw.scalar("SELECT COUNT(*) FROM workloads").await, 3);
    let filter = halflife::store::AuditFilter::default();
    let events = store.audit_events(&filter, None, 10).await.unwrap();
    let events: Vec<(Option<String>, Option<String>)> =
        events.into_iter().map(|e| (e.event.jti, e.event.subject)).collect();
    let expected = [("j1", "first"), ("j2", "third"), ("j3", "second")].map(|(j, s)| (Some(j.into()), Some(s.into())));
    assert_eq!(events, expected);
}

/// An event's detail is stored in its row the first time the writer meets
/// it, and once, in `audit_names`, when later events repeat it; one that is
/// never repeated (a database login's role), or too long for an index
/// entry, stays in its row. Either way it reads back as written, and the
/// chain over it verifies.
#[tokio::test]
async fn a_repeated_detail_is_stored_once() {
    use halflife::audit::{ChainVerifier, GENESIS};

    let dir = tempfile::tempdir().unwrap();
    let Some(db) = TestDb::create(dir.path()).await else { return };
    let (store, mut raw) = store_with_indexer(&db).await;
    let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let mut written = Vec::new();
    for n in 1..=8 {
        let mut i = issuance(&format!("j{n}"), "spire", "w", now);
        let detail = match n {
            1..=4 => json!({"key_id": "k1", "kind": "jwt"}),
            5..=6 => json!({"db_role": format!("hl_indexer_{n}"), "kind": "database_login"}),
            _ => json!({"note": "x".repeat(3000)}),
        };
        i.event.detail = Some(detail.clone());
        written.push(Some(detail));
        store.record_issuance(i).await.unwrap();
    }
    let events = store.audit_events(&halflife::store::AuditFilter::default(), None, 10).await.unwrap();
    assert_eq!(events.iter().map(|e| e.event.detail.clone()).collect::<Vec<_>>(), written);
    let mut chain = ChainVerifier::new(1, GENESIS.to_owned(), &[]);
    for event in &events {
        chain.push(event);
    }
    let report = chain.finish();
    assert_eq!((report.events_checked, report.first_problem), (8, None));
    // The first of the four alike, the two logins and the two long ones in
    // their rows; the other three name one stored copy.
    assert_eq!(raw.scalar("SELECT COUNT(*) FROM audit_events WHERE detail IS NOT NULL").await, 5);
    assert_eq!(raw.scalar("SELECT COUNT(DISTINCT detail_id) FROM audit_events").await, 1);
    assert_eq!(raw.scalar("SELECT COUNT(*) FROM audit_events WHERE detail_id IS NOT NULL").await, 3);
}

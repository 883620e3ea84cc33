//! Sensitive grants wait for a person's approval: the exchange answers
//! `authorization_pending` with a stable access request until an approver
//! who owns nothing of the system decides; an approval lasts its window,
//! is revocable and revokes what was issued under it; denial and lapse are
//! answered as RFC 8628 answers them; break glass is announced and reviewed
//! by a second person. Run on SQLite and on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use halflife::clock::Clock;
use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// A webhook receiver: every body POSTed to the returned URL.
async fn hook() -> (String, Arc<tokio::sync::Mutex<Vec<Value>>>) {
    let received = Arc::new(tokio::sync::Mutex::new(Vec::<Value>::new()));
    let r = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let r = r.clone();
            async move {
                r.lock().await.push(body);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, received)
}

async fn spawn(extra_config: String) -> Option<TestApp> {
    spawn_with(Options { catalog: approval_catalog(), extra_config, ..Options::default() }).await
}

/// Exchanges the RSA workload's attestation for `scope`.
async fn ask(app: &TestApp, scope: &str) -> (u16, Value) {
    let token = app.rsa.token(RSA_SUBJECT, app.now());
    let response = app.exchange(&token, &[("audience", "reports-api"), ("scope", scope)]).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

fn pending_id(status: u16, body: &Value) -> String {
    assert_eq!((status, body["error"].as_str()), (400, Some("authorization_pending")), "{body}");
    body["access_request"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_exchange_waits_for_an_approval_and_succeeds_while_it_lasts() {
    let (url, received) = hook().await;
    let Some(app) = spawn(format!("[lifecycle]\nwebhook_url = \"{url}\"\n")).await else { return };
    let (status, body) = ask(&app, "reports:read").await;
    let id = pending_id(status, &body);
    assert_eq!((body["interval"].as_u64(), body["expires_in"].as_i64()), (Some(5), Some(900)), "{body}");
    // Asking again finds the same request; another ask is another request.
    for _ in 0..3 {
        let (status, again) = ask(&app, "reports:read").await;
        assert_eq!(pending_id(status, &again), id, "no duplicates while pending");
    }
    let (status, other) = ask(&app, "reports:read reports:write").await;
    assert_ne!(pending_id(status, &other), id);

    let approver = app.person_token("ann@corp.example", &["hl-approvers"]).await;
    let (status, list) = app.api(Method::GET, "/v1/access-requests?state=pending", &approver, None).await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<&str> =
        list["access_requests"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(listed.contains(&id.as_str()) && listed.len() == 2, "{list}");
    let request = list["access_requests"].as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(request["subject"], RSA_SUBJECT);
    assert_eq!(request["asked"]["scopes"], json!(["reports:read"]));

    // Who may not decide: an automation token, an owner, a person outside
    // the grant's approvers, an approval longer than the grant allows.
    let path = format!("/v1/access-requests/{id}/approve");
    let admin_token = app.admin_token(Role::Admin).await;
    let owner = app.person_token("tech@example.com", &["hl-approvers"]).await;
    let outsider = app.person_token("otto@corp.example", &["hl-admins"]).await;
    for (who, token, says) in [
        ("an automation token", &admin_token, "automation token"),
        ("an owner", &owner, "owns system summarizer"),
        ("someone not named", &outsider, "approvers are hl-approvers"),
    ] {
        let (status, body) = app.api(Method::POST, &path, token, Some(json!({}))).await;
        assert_eq!(status, 403, "{who}: {body}");
        assert!(body["error_description"].as_str().unwrap().contains(says), "{who}: {body}");
    }
    let (status, body) = app.api(Method::POST, &path, &approver, Some(json!({"duration": "2h"}))).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("duration")), "{body}");

    let (status, approved) =
        app.api(Method::POST, &path, &approver, Some(json!({"duration": "30m", "reason": "ticket 42"}))).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "approved");
    let until = approved["approved_until"].as_str().unwrap().to_owned();
    assert_eq!(until, halflife::domain::rfc3339(app.clock.now() + Duration::from_secs(1800)));
    let (status, body) = app.api(Method::POST, &path, &approver, Some(json!({}))).await;
    assert_eq!(status, 409, "decided once: {body}");

    // The exchange now succeeds, within the window, and its record names the approval.
    let (status, issued) = ask(&app, "reports:read").await;
    assert_eq!(status, 200, "{issued}");
    let (_, claims) = parts(issued["access_token"].as_str().unwrap());
    assert!(claims["exp"].as_i64().unwrap() <= app.now() + 1800);
    let auditor = app.admin_token(Role::Auditor).await;
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=credential.issued", &auditor, None).await;
    assert_eq!(page["events"].as_array().unwrap().last().unwrap()["detail"]["approval"], json!(id), "{page}");
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=access_request.approved", &auditor, None).await;
    let event = &page["events"][0];
    assert_eq!(event["actor"], json!(format!("ann@corp.example (approver; person sub-ann at {PEOPLE_ISS})")));
    assert_eq!(event["reason"], "ticket 42");

    // After the window the same ask is a new request.
    app.clock.advance(Duration::from_secs(1800));
    let (status, body) = ask(&app, "reports:read").await;
    let next = pending_id(status, &body);
    assert_ne!(next, id);

    // The webhook heard of each request and of the decision, with a link.
    app.reap().await;
    let delivered = received.lock().await;
    let events: Vec<&str> = delivered.iter().filter_map(|b| b["event"].as_str()).collect();
    assert_eq!(events.iter().filter(|e| **e == "access_request.created").count(), 3, "{delivered:?}");
    assert!(events.contains(&"access_request.approved"), "{delivered:?}");
    let created = delivered.iter().find(|b| b["access_request"]["id"] == id.as_str()).unwrap();
    assert_eq!(created["link"], json!(format!("{}/v1/access-requests/{id}", app.base)));
}

#[tokio::test]
async fn a_denial_is_answered_access_denied_and_a_lapse_expired_token() {
    let Some(app) = spawn(String::new()).await else { return };
    let approver = app.person_token("ann@corp.example", &["hl-approvers"]).await;
    let (status, body) = ask(&app, "reports:read").await;
    let id = pending_id(status, &body);
    let (status, body) =
        app.api(Method::POST, &format!("/v1/access-requests/{id}/deny"), &approver, Some(json!({}))).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("reason")), "a denial says why: {body}");
    let (status, denied) = app
        .api(Method::POST, &format!("/v1/access-requests/{id}/deny"), &approver, Some(json!({"reason": "not now"})))
        .await;
    assert_eq!((status, denied["state"].as_str()), (200, Some("denied")), "{denied}");
    for _ in 0..2 {
        let (status, body) = ask(&app, "reports:read").await;
        assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");
        assert!(body["error_description"].as_str().unwrap().contains("not now"), "{body}");
    }

    // Undecided, a request lapses after approvals.pending_for (15m).
    let (status, body) = ask(&app, "reports:write").await;
    let lapsing = pending_id(status, &body);
    app.clock.advance(Duration::from_secs(900));
    let report = app.reap().await;
    assert!(report.access_requests >= 1, "{report:?}");
    let (_, request) = app.api(Method::GET, &format!("/v1/access-requests/{lapsing}"), &approver, None).await;
    assert_eq!(request["state"], "expired", "{request}");
    let (status, body) =
        app.api(Method::POST, &format!("/v1/access-requests/{lapsing}/approve"), &approver, None).await;
    assert_eq!(status, 409, "a lapsed request is not decided: {body}");
    let (status, body) = ask(&app, "reports:write").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("expired_token")), "{body}");
    // Asking again opens a new request; so does the denied ask once its request lapsed.
    let (status, body) = ask(&app, "reports:write").await;
    assert_ne!(pending_id(status, &body), lapsing);
    let (status, body) = ask(&app, "reports:read").await;
    assert_ne!(pending_id(status, &body), id);

    let auditor = app.admin_token(Role::Auditor).await;
    for kind in ["access_request.created", "access_request.denied", "access_request.expired"] {
        let (_, page) = app.api(Method::GET, &format!("/v1/audit/events?kind={kind}"), &auditor, None).await;
        assert!(!page["events"].as_array().unwrap().is_empty(), "{kind}: {page}");
    }
}

#[tokio::test]
async fn revoking_an_approval_revokes_what_it_allowed_and_a_stopped_system_ends_approvals() {
    let Some(app) = spawn(String::new()).await else { return };
    let approver = app.person_token("ann@corp.example", &["hl-approvers"]).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let (status, body) = ask(&app, "reports:read").await;
    let id = pending_id(status, &body);
    let (status, _) = app.api(Method::POST, &format!("/v1/access-requests/{id}/approve"), &approver, None).await;
    assert_eq!(status, 200);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (status, issued) = ask(&app, "reports:read").await;
        assert_eq!(status, 200, "{issued}");
        tokens.push(issued["access_token"].as_str().unwrap().to_owned());
    }
    for token in &tokens {
        assert_eq!(app.introspect(&introspector, token).await["active"], true);
    }
    let auditor = app.person_token("aud@corp.example", &["hl-auditors"]).await;
    let (status, _) = app
        .api(Method::POST, &format!("/v1/access-requests/{id}/revoke"), &auditor, Some(json!({"reason": "x"})))
        .await;
    assert_eq!(status, 403, "an auditor takes nothing back");
    let (status, revoked) = app
        .api(
            Method::POST,
            &format!("/v1/access-requests/{id}/revoke"),
            &approver,
            Some(json!({"reason": "done early"})),
        )
        .await;
    assert_eq!((status, revoked["state"].as_str()), (200, Some("revoked")), "{revoked}");
    for token in &tokens {
        assert_eq!(app.introspect(&introspector, token).await, json!({"active": false}), "revoked with its approval");
    }
    let (status, body) = ask(&app, "reports:read").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "said once: {body}");
    let (status, body) = ask(&app, "reports:read").await;
    let again = pending_id(status, &body);

    // Suspending the system ends its open requests and approvals.
    let (status, _) = app.api(Method::POST, &format!("/v1/access-requests/{again}/approve"), &approver, None).await;
    assert_eq!(status, 200);
    let (status, body) = ask(&app, "reports:write").await;
    let waiting = pending_id(status, &body);
    let operator = app.person_token("olga@corp.example", &["hl-operators"]).await;
    let (status, _) =
        app.api(Method::POST, "/v1/systems/summarizer/suspend", &operator, Some(json!({"reason": "incident"}))).await;
    assert_eq!(status, 200);
    for request in [&again, &waiting] {
        let (_, body) = app.api(Method::GET, &format!("/v1/access-requests/{request}"), &approver, None).await;
        assert_eq!(body["state"], "revoked", "{body}");
        assert!(body["reason"].as_str().unwrap().contains("suspended"), "{body}");
    }
}

#[tokio::test]
async fn break_glass_is_announced_and_waits_for_a_second_persons_review() {
    let (url, received) = hook().await;
    let Some(app) = spawn(format!("[lifecycle]\nwebhook_url = \"{url}\"\n")).await else { return };
    let (status, body) = ask(&app, "reports:read").await;
    let id = pending_id(status, &body);
    // The technical owner, an operator, in an emergency.
    let owner = app.person_token("tech@example.com", &["hl-operators"]).await;
    let path = format!("/v1/access-requests/{id}/approve");
    let (status, body) = app.api(Method::POST, &path, &owner, Some(json!({}))).await;
    assert_eq!(status, 403, "not without breaking the glass: {body}");
    let (status, body) = app.api(Method::POST, &path, &owner, Some(json!({"break_glass": true}))).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("reason")), "{body}");
    let (status, body) =
        app.api(Method::POST, &path, &owner, Some(json!({"break_glass": true, "reason": "outage P1"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["break_glass"], true);
    let (status, _) = ask(&app, "reports:read").await;
    assert_eq!(status, 200);

    // Announced at once, recorded, and listed until someone else reviews it.
    app.reap().await;
    assert!(received.lock().await.iter().any(|b| b["event"] == "access.break_glass"), "announced");
    let auditor = app.person_token("aud@corp.example", &["hl-auditors"]).await;
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=access.break_glass", &auditor, None).await;
    assert_eq!(page["events"][0]["reason"], "outage P1", "{page}");
    let (_, reviews) = app.api(Method::GET, "/v1/reviews", &auditor, None).await;
    assert_eq!(reviews["reviews"][0]["id"], json!(id), "{reviews}");
    let (status, body) = app.api(Method::POST, &format!("/v1/reviews/{id}/done"), &owner, None).await;
    assert_eq!(status, 403, "not by the one who broke it: {body}");
    let (status, body) =
        app.api(Method::POST, &format!("/v1/reviews/{id}/done"), &auditor, Some(json!({"note": "justified"}))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["reviewed_by"].as_str().unwrap().starts_with("aud@corp.example"), "{body}");
    let (_, reviews) = app.api(Method::GET, "/v1/reviews", &auditor, None).await;
    assert_eq!(reviews["reviews"], json!([]));
    let (status, _) = app.api(Method::POST, &format!("/v1/reviews/{id}/done"), &auditor, None).await;
    assert_eq!(status, 404, "reviewed once");
}

#[tokio::test]
async fn a_classification_policy_requires_approval_for_every_grant_of_its_systems() {
    let options =
        Options { extra_config: "[approvals]\nrequired_for = [\"restricted\"]\n".into(), ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };
    let operator = app.person_token("olga@corp.example", &["hl-operators"]).await;
    let spire = app.ec.token("spiffe://prod.example/ns/ai/indexer", app.now());
    let response = app.exchange(&spire, &[("audience", "search-api")]).await;
    assert_eq!(response.status(), 200, "indexer is internal: no approval needed");
    let (status, body) = app
        .api(Method::PATCH, "/v1/systems/indexer", &operator, Some(json!({"data_classification": "restricted"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let spire = app.ec.token("spiffe://prod.example/ns/ai/indexer", app.now());
    let response = app.exchange(&spire, &[("audience", "search-api")]).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let id = pending_id(400, &body);
    // Any person with the approver role decides (the grant names no approvers).
    let approver = app.person_token("ann@corp.example", &["hl-approvers"]).await;
    let (status, body) = app.api(Method::POST, &format!("/v1/access-requests/{id}/approve"), &approver, None).await;
    assert_eq!(status, 200, "{body}");
    let spire = app.ec.token("spiffe://prod.example/ns/ai/indexer", app.now());
    assert_eq!(app.exchange(&spire, &[("audience", "search-api")]).await.status(), 200);
}

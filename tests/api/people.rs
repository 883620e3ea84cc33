//! People sign in with the organisation's identity provider for a
//! short-lived, revocable session; roles come from their groups; automation
//! tokens expire, are listed with their last use and revoked; every event
//! names its actor by verified identity. (The provider here is a key the
//! test holds; tests/api/idp.rs and the login tests run a real one.)

use std::time::Duration;

use halflife::clock::Clock;
use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// The events of `kind`, newest last, as the audit API shows them.
async fn audit(app: &TestApp, auditor: &str, kind: &str) -> Vec<Value> {
    let (status, page) = app.api(Method::GET, &format!("/v1/audit/events?kind={kind}"), auditor, None).await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_person_signs_in_and_their_groups_decide_what_the_session_may_do() {
    let Some(app) = spawn_app().await else { return };
    let (status, info) = app.api(Method::GET, "/v1/sign-in", "", None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        info,
        json!({"issuer": PEOPLE_ISS, "client_id": PEOPLE_CLIENT,
                            "scopes": ["openid", "email", "profile", "groups"]})
    );

    let (status, body) = app.sign_in(&app.id_token("olga@corp.example", &["hl-operators", "hl-approvers", "x"])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], "urn:halflife:token-type:session");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 8 * 3600);
    assert_eq!(body["session"]["roles"], json!(["operator", "approver"]));
    assert_eq!(body["session"]["email"], "olga@corp.example");
    let session = body["access_token"].as_str().unwrap().to_owned();
    assert!(session.starts_with("hls_"), "{session}");

    let (status, me) = app.api(Method::GET, "/v1/whoami", &session, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["kind"], "person");
    assert_eq!((me["issuer"].as_str(), me["subject"].as_str()), (Some(PEOPLE_ISS), Some("sub-olga")));
    // An operator may change things...
    let (status, body) =
        app.api(Method::POST, "/v1/systems/summarizer/suspend", &session, Some(json!({"reason": "incident 7"}))).await;
    assert_eq!(status, 200, "{body}");
    // ...and the trail names her by verified identity, not a chosen name.
    let auditor = app.person_token("aud@corp.example", &["hl-auditors"]).await;
    let suspended = audit(&app, &auditor, "system.suspended").await;
    let actor = suspended.last().unwrap()["actor"].as_str().unwrap().to_owned();
    assert_eq!(actor, format!("olga@corp.example (operator, approver; person sub-olga at {PEOPLE_ISS})"));
    let created = audit(&app, &auditor, "session.created").await;
    let olga = created.iter().find(|e| e["subject"] == "sub-olga").expect("session.created for olga");
    assert_eq!(olga["detail"]["email"], "olga@corp.example");
    assert_eq!(olga["detail"]["roles"], json!(["operator", "approver"]));
    assert!(!olga.to_string().contains(&session), "the token is never recorded");

    // An auditor reads and changes nothing; an approver only decides.
    let (status, _) = app.api(Method::GET, "/v1/systems", &auditor, None).await;
    assert_eq!(status, 200);
    let (status, body) = app
        .api(
            Method::POST,
            "/v1/systems/summarizer/reinstate",
            &auditor,
            Some(json!({"reason": "no", "pilot_ends_at": "10d"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let approver = app.person_token("appr@corp.example", &["hl-approvers"]).await;
    let (status, body) = app.api(Method::GET, "/v1/systems", &approver, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("approver"), "{body}");
}

#[tokio::test]
async fn only_valid_id_tokens_of_mapped_people_sign_in_and_each_refusal_is_recorded() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    // In no mapped group: a valid token, but no session.
    let (status, body) = app.sign_in(&app.id_token("nobody@corp.example", &["staff"])).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("no group"), "{body}");

    let now = app.now();
    let claims = |extra: Value| {
        let mut c = json!({"iss": PEOPLE_ISS, "sub": "sub-x", "aud": PEOPLE_CLIENT, "iat": now, "exp": now + 300,
                           "email": "x@corp.example", "groups": ["hl-admins"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let mut bad = vec![
        ("another client's token", app.people.sign(&claims(json!({"aud": "other-client"})))),
        ("an expired token", app.people.sign(&claims(json!({"iat": now - 900, "exp": now - 600})))),
        ("another issuer", app.people.sign(&claims(json!({"iss": "https://evil.example"})))),
        ("a workload's attestation", app.rsa.token(RSA_SUBJECT, now)),
    ];
    let mut at_header = app.people.header();
    at_header["typ"] = json!("at+jwt");
    bad.push(("an access token", app.people.sign_raw(&at_header, &claims(json!({})))));
    for (what, token) in &bad {
        let (status, body) = app.sign_in(token).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{what}: {body}");
        assert!(body.get("access_token").is_none());
    }
    // Wrong token types and extras are request errors.
    let good = app.id_token("x@corp.example", &["hl-admins"]);
    let response = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", good.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("requested_token_type", "urn:halflife:token-type:session"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error_description"].as_str().unwrap().contains("id_token"), "{body}");

    let refused = audit(&app, &admin, "session.refused").await;
    assert_eq!(refused.len(), 1 + bad.len(), "{refused:?}");
    assert!(refused.iter().all(|e| e["outcome"] == "denied"));
}

#[tokio::test]
async fn allowed_email_domains_admit_only_verified_addresses_there() {
    let options = Options { people: false, ..Options::default() };
    let Some(mut app) = spawn_with(options).await else { return };
    // The default app has no [people]: nobody signs in.
    let (status, body) = app.api(Method::GET, "/v1/sign-in", "", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.sign_in(&app.id_token("a@corp.example", &["hl-admins"])).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");

    // With [people] and a domain rule.
    app.stop().await;
    let dir = app.dir.path().display().to_string();
    std::fs::write(app.dir.path().join("people.jwks"), app.people.jwks().to_string()).unwrap();
    let text = format!("{}\n{}", app.config_text(), people_config(&dir)).replace(
        "algorithms = [\"ES256\"]\n\n[[people.roles]]",
        "algorithms = [\"ES256\"]\nallowed_email_domains = [\"corp.example\"]\n\n[[people.roles]]",
    );
    assert!(text.contains("allowed_email_domains"));
    let app = app.restart_with(text).await;
    let (status, _) = app.sign_in(&app.id_token("a@CORP.example", &["hl-admins"])).await;
    assert_eq!(status, 200);
    for (email, verified) in [("a@other.example", true), ("a@corp.example.evil", true), ("a@corp.example", false)] {
        let now = app.now();
        let token = app.people.sign(&json!({"iss": PEOPLE_ISS, "sub": "s", "aud": PEOPLE_CLIENT, "iat": now,
            "exp": now + 60, "email": email, "email_verified": verified, "groups": ["hl-admins"]}));
        let (status, body) = app.sign_in(&token).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{email} {verified}: {body}");
    }
}

#[tokio::test]
async fn a_session_expires_and_is_revocable_by_its_person_or_an_admin() {
    let Some(app) = spawn_app().await else { return };
    let olga = app.person_token("olga@corp.example", &["hl-operators"]).await;
    let olga_too = app.person_token("olga@corp.example", &["hl-operators"]).await;
    let pete = app.person_token("pete@corp.example", &["hl-operators"]).await;
    let admin = app.person_token("ada@corp.example", &["hl-admins"]).await;

    // Each person sees their own sessions; an admin sees everyone's.
    let (_, mine) = app.api(Method::GET, "/v1/sessions", &olga, None).await;
    assert_eq!(mine["sessions"].as_array().unwrap().len(), 2, "{mine}");
    let (_, all) = app.api(Method::GET, "/v1/sessions", &admin, None).await;
    assert_eq!(all["sessions"].as_array().unwrap().len(), 4, "{all}");
    assert!(!all.to_string().contains("hls_"), "no session token is ever shown again");
    let olga_ids: Vec<String> =
        mine["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();

    // Pete cannot end Olga's session, nor learn it exists.
    let (status, _) = app.api(Method::POST, &format!("/v1/sessions/{}/revoke", olga_ids[0]), &pete, None).await;
    assert_eq!(status, 404);
    // Olga ends her current session (logout): it stops at once, her other one works.
    let (status, body) = app.api(Method::POST, "/v1/sessions/current/revoke", &olga, None).await;
    assert_eq!((status, &body["revoked"]), (200, &json!(true)), "{body}");
    let (status, _) = app.api(Method::GET, "/v1/whoami", &olga, None).await;
    assert_eq!(status, 401);
    let (status, _) = app.api(Method::GET, "/v1/whoami", &olga_too, None).await;
    assert_eq!(status, 200);
    // An admin ends Pete's.
    let (_, pete_me) = app.api(Method::GET, "/v1/whoami", &pete, None).await;
    let (status, _) =
        app.api(Method::POST, &format!("/v1/sessions/{}/revoke", pete_me["id"].as_str().unwrap()), &admin, None).await;
    assert_eq!(status, 200);
    let (status, _) = app.api(Method::GET, "/v1/systems", &pete, None).await;
    assert_eq!(status, 401);
    // A replica sees the revocation at once (sessions are never cached).
    let replica = app.replica().await;
    let (status, _) = app.api(Method::GET, "/v1/whoami", &pete, None).await;
    assert_eq!(status, 401);
    let response = replica.client.get(replica.url("/v1/whoami")).bearer_auth(&olga_too).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let revoked = audit(&app, &admin, "session.revoked").await;
    assert_eq!(revoked.len(), 2, "{revoked:?}");

    // Sessions last people.session_ttl (8 hours by default).
    app.clock.advance(Duration::from_secs(8 * 3600 - 1));
    let (status, _) = app.api(Method::GET, "/v1/whoami", &olga_too, None).await;
    assert_eq!(status, 200);
    app.clock.advance(Duration::from_secs(1));
    let (status, body) = app.api(Method::GET, "/v1/whoami", &olga_too, None).await;
    assert_eq!(status, 401, "{body}");
    let (_, all) = app.api(Method::GET, "/v1/sessions", &app.admin_token(Role::Admin).await, None).await;
    assert_eq!(all["sessions"], json!([]), "expired sessions are not listed");
}

#[tokio::test]
async fn automation_tokens_expire_show_their_last_use_and_are_revocable() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token_named(Role::Admin, "bootstrap").await;
    let (status, body) = app
        .api(Method::POST, "/v1/admin-tokens", &admin, Some(json!({"role": "operator", "name": "ci", "ttl": "30d"})))
        .await;
    assert_eq!(status, 201, "{body}");
    let ci = body["token"].as_str().unwrap().to_owned();
    let ci_id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["expires_at"], json!(halflife::domain::rfc3339(app.clock.now() + Duration::from_secs(30 * 86400))));
    // People roles are not for tokens; lifetimes are bounded.
    for (bad, field) in [
        (json!({"role": "approver", "name": "bot"}), "role"),
        (json!({"role": "operator", "name": "bot", "ttl": "3y"}), "ttl"),
        (json!({"role": "operator", "name": "bot", "ttl": "soon"}), "ttl"),
    ] {
        let (status, body) = app.api(Method::POST, "/v1/admin-tokens", &admin, Some(bad.clone())).await;
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{bad}: {body}");
    }

    let (status, me) = app.api(Method::GET, "/v1/whoami", &ci, None).await;
    assert_eq!(status, 200);
    assert_eq!((me["kind"].as_str(), me["name"].as_str()), (Some("automation"), Some("ci")));
    let (_, list) = app.api(Method::GET, "/v1/admin-tokens", &admin, None).await;
    let listed = list["tokens"].as_array().unwrap().iter().find(|t| t["id"] == ci_id.as_str()).unwrap().clone();
    assert_eq!(listed["last_used_at"], json!(halflife::domain::rfc3339(app.clock.now())), "{list}");
    assert!(!list.to_string().contains("hla_"), "tokens are never shown again");
    // Only admins list tokens.
    let (status, _) = app.api(Method::GET, "/v1/admin-tokens", &ci, None).await;
    assert_eq!(status, 403);

    // A token's actor names it and its id.
    let (status, _) =
        app.api(Method::POST, "/v1/systems/summarizer/suspend", &ci, Some(json!({"reason": "drill"}))).await;
    assert_eq!(status, 200);
    let events = audit(&app, &admin, "system.suspended").await;
    assert_eq!(events.last().unwrap()["actor"], json!(format!("ci (operator; automation token {ci_id})")));

    // It expires...
    app.clock.advance(Duration::from_secs(30 * 86400));
    let (status, _) = app.api(Method::GET, "/v1/whoami", &ci, None).await;
    assert_eq!(status, 401);
    // ...and is revoked at once.
    let (status, body) =
        app.api(Method::POST, "/v1/admin-tokens", &admin, Some(json!({"role": "auditor", "name": "reports"}))).await;
    assert_eq!(status, 201, "{body}");
    let (reports, reports_id) = (body["token"].as_str().unwrap().to_owned(), body["id"].as_str().unwrap().to_owned());
    let (status, _) = app.api(Method::GET, "/v1/systems", &reports, None).await;
    assert_eq!(status, 200);
    let (status, body) = app.api(Method::POST, &format!("/v1/admin-tokens/{reports_id}/revoke"), &admin, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.api(Method::GET, "/v1/systems", &reports, None).await;
    assert_eq!(status, 401);
    let (status, _) = app.api(Method::POST, &format!("/v1/admin-tokens/{reports_id}/revoke"), &admin, None).await;
    assert_eq!(status, 404);
    assert_eq!(audit(&app, &admin, "admin_token.revoked").await.len(), 1);
}

#[tokio::test]
async fn an_owner_is_linked_to_the_person_who_signs_in_with_their_address() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.person_token("aud@corp.example", &["hl-auditors"]).await;
    let (_, owner) = app.api(Method::GET, "/v1/owners/tech", &auditor, None).await;
    assert_eq!(owner["people"], json!([]), "nobody has signed in as tech yet: {owner}");

    // The technical owner signs in: their verified address is the owner's.
    let first = app.session_of(&app.id_token_as("u-4711", "Tech@Example.com", &["hl-operators"])).await;
    let (_, owner) = app.api(Method::GET, "/v1/owners/tech", &auditor, None).await;
    assert_eq!(owner["people"][0]["issuer"], PEOPLE_ISS, "{owner}");
    assert_eq!(owner["people"][0]["subject"], "u-4711", "{owner}");
    let (_, created) = app.api(Method::GET, "/v1/audit/events?kind=session.created", &auditor, None).await;
    let tech = created["events"].as_array().unwrap().iter().find(|e| e["subject"] == "u-4711").unwrap().clone();
    assert_eq!(tech["detail"]["owners"], json!(["tech"]), "{tech}");
    drop(first);

    // Later the provider gives them another address: still the owner.
    let renamed = app.session_of(&app.id_token_as("u-4711", "t.owner@corp.example", &["hl-operators"])).await;
    let (status, _) = app
        .api(Method::PATCH, "/v1/systems/summarizer", &renamed, Some(json!({"data_classification": "internal"})))
        .await;
    assert_eq!(status, 200);
    let (status, body) = app.api(Method::POST, "/v1/systems/summarizer/promote", &renamed, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["failed_checks"].to_string().contains("owns this system"), "{body}");
}

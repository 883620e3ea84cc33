//! The lifecycle promises under attack: no path that changes the catalog
//! (the API, `apply` through the server or on the database, the bootstrap
//! apply at start) can cure a lapse or revive a credential; production
//! keeps what production requires for as long as it lasts; look-alike
//! names do not pass separation of duties; a pilot's length is bounded
//! from its start; every change and every refusal is attributed; and
//! removing a grant takes effect. Every case counts towards the
//! `governance` line of `scripts/scoreboard`.

use std::time::Duration;

use halflife::clock::Clock;
use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "urn:halflife:token-type:secret";
const AGENT: &str = "system:serviceaccount:gov:agent";

fn at(app: &TestApp, after: Duration) -> String {
    halflife::domain::rfc3339(app.clock.now() + after)
}

/// Owners eve, frank and gail; pilot `sysa` of `business` and frank; a grant
/// for `AGENT` allowing JWTs and secrets for an hour. `eve_until` is eve's
/// attestation (RFC 3339); `eve_status` active or departed.
fn catalog(eve_until: &str, eve_status: &str, business: &str) -> String {
    format!(
        r#"
[[owners]]
id = "eve"
display_name = "Eve"
email = "eve@example.com"
status = "{eve_status}"
attested_until = "{eve_until}"

[[owners]]
id = "frank"
display_name = "Frank"
email = "frank@example.com"

[[owners]]
id = "gail"
display_name = "Gail"
email = "gail@example.com"

[[systems]]
id = "sysa"
name = "System A"
purpose = "Answers questions"
business_owner = "{business}"
technical_owner = "frank"
tier = "pilot"
pilot_ends_at = "30d"
data_classification = "internal"

[[grants]]
id = "sysa-agent"
system = "sysa"
issuer = "k8s"
subject = "{AGENT}"
audiences = ["reports-api"]
scopes = ["reports:read", "reports:write"]
kinds = ["jwt", "secret"]
max_ttl = "1h"
"#
    )
}

/// Applies a catalog through the server (`POST /v1/catalog`).
async fn apply_via_api(app: &TestApp, token: &str, text: &str) -> (u16, Value) {
    let file = halflife::broker::apply::parse(text).unwrap();
    app.api(Method::POST, "/v1/catalog", token, Some(serde_json::to_value(&file).unwrap())).await
}

/// Applies a catalog directly on the database from another store handle,
/// as `halflife apply --local` in another process would.
async fn apply_locally(app: &TestApp, text: &str) -> anyhow::Result<halflife::domain::catalog::ApplyReport> {
    let path = app.dir.path().join(format!("local-{}.toml", uuid_like()));
    std::fs::write(&path, text).unwrap();
    let store = halflife::store::open(&halflife::store::OpenOptions {
        url: app.db_url(),
        busy_timeout: Duration::from_secs(5),
        max_connections: 1,
        auto_migrate: false,
        application_name: "halflife test apply".into(),
    })
    .await
    .unwrap()
    .store;
    halflife::app::apply_file(store.as_ref(), &local_config(), &path, "local:test", app.clock.now(), false).await
}

/// The configuration a local apply validates against: the test issuers.
fn local_config() -> halflife::config::Config {
    halflife::config::Config::from_toml(&format!(
        "[dev]\nenabled = true\n[[issuers]]\nname = \"k8s\"\nissuer = \"{RSA_ISS}\"\njwks_file = \"x\"\naudience = \"{AUD}\"\n\
         [[issuers]]\nname = \"spire\"\nissuer = \"{EC_ISS}\"\njwks_file = \"y\"\naudience = \"{AUD}\"\n"
    ))
    .unwrap()
}

async fn system_state(app: &TestApp, token: &str, id: &str) -> Value {
    let (status, body) = app.api(Method::GET, &format!("/v1/systems/{id}"), token, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Exchanges a JWT (an hour) and an opaque secret for `AGENT`.
async fn credentials(app: &TestApp) -> (String, String) {
    let jwt = app.exchange_ok(&app.rsa.token(AGENT, app.now()), &[("requested_ttl", "3600")]).await;
    let secret = app.exchange_ok(&app.rsa.token(AGENT, app.now()), &[("requested_token_type", SECRET)]).await;
    (jwt["access_token"].as_str().unwrap().to_owned(), secret["access_token"].as_str().unwrap().to_owned())
}

async fn inactive(app: &TestApp, introspector: &str, tokens: &[&str]) -> bool {
    for token in tokens {
        if app.introspect(introspector, token).await != json!({"active": false}) {
            return false;
        }
    }
    true
}

/// How the lapse is "cured".
#[derive(Debug, Clone, Copy)]
enum Cure {
    /// `POST /v1/catalog` swaps the business owner.
    CatalogApi,
    /// A catalog applied on the database by another process swaps it.
    LocalApply,
    /// `PATCH /v1/systems/sysa` swaps it.
    Patch,
    /// The bootstrap catalog, edited while the broker was down, swaps it.
    Bootstrap,
}

/// The issue's reproduction: credentials issued, the business owner's
/// attestation lapses (they go inactive, exchanges are refused), then a
/// change swaps the owner before any reaper pass. The system must be
/// suspended by that very change, and the credentials must stay inactive.
async fn a_lapse_is_not_cured_by(cure: Cure) {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let eve_until = at(&app, Duration::from_secs(10));
    let (status, body) = apply_via_api(&app, &operator, &catalog(&eve_until, "active", "eve")).await;
    assert_eq!(status, 200, "{body}");
    let introspector = app.admin_token(Role::Introspector).await;
    let (jwt, secret) = credentials(&app).await;
    assert!(!inactive(&app, &introspector, &[&jwt]).await);

    // Eve's attestation passes; no reaper pass runs.
    app.clock.advance(Duration::from_secs(20));
    assert!(inactive(&app, &introspector, &[&jwt, &secret]).await, "a lapsed owner's credentials are inactive");
    let refused = app.exchange(&app.rsa.token(AGENT, app.now()), &[]).await;
    let body: Value = refused.json().await.unwrap();
    assert!(body["error_description"].as_str().unwrap().contains("lapsed"), "{body}");

    let swapped = catalog(&eve_until, "active", "gail");
    let app = match cure {
        Cure::CatalogApi => {
            let (status, body) = apply_via_api(&app, &operator, &swapped).await;
            assert_eq!(status, 200, "{body}");
            assert!(body["suspended"].to_string().contains("sysa"), "the apply reports the suspension: {body}");
            app
        }
        Cure::LocalApply => {
            let report = apply_locally(&app, &swapped).await.unwrap();
            assert!(report.suspended.iter().any(|s| s.starts_with("system/sysa")), "{report:?}");
            app
        }
        Cure::Patch => {
            let (status, body) =
                app.api(Method::PATCH, "/v1/systems/sysa", &operator, Some(json!({"business_owner": "gail"}))).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["state"], "suspended", "{body}");
            app
        }
        Cure::Bootstrap => {
            std::fs::write(app.dir.path().join("catalog.toml"), format!("{}\n{swapped}", default_catalog())).unwrap();
            app.restart().await
        }
    };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let suspended = eventually(Duration::from_secs(3), || async {
        system_state(&app, &operator, "sysa").await["state"] == "suspended"
    })
    .await;
    assert!(suspended, "{cure:?}: the change must suspend the lapsed system");
    let system = system_state(&app, &operator, "sysa").await;
    assert_eq!(system["business_owner"], "gail", "{cure:?}: the change itself is kept");
    assert!(system["suspended_reason"].as_str().unwrap().contains("eve"), "{system}");
    for _ in 0..3 {
        assert!(inactive(&app, &introspector, &[&jwt, &secret]).await, "{cure:?}: the credentials came back");
        app.reap().await;
    }
    let refused = app.exchange(&app.rsa.token(AGENT, app.now()), &[]).await;
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "access_denied", "{cure:?}: {body}");

    // Reinstating brings new credentials, never the old ones.
    let (status, body) = app
        .api(
            Method::POST,
            "/v1/systems/sysa/reinstate",
            &operator,
            Some(json!({"pilot_ends_at": at(&app, Duration::from_secs(86400)), "reason": "owner replaced"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(inactive(&app, &introspector, &[&jwt, &secret]).await, "{cure:?}: reinstatement revived credentials");
    app.exchange_ok(&app.rsa.token(AGENT, app.now()), &[]).await;

    // The trail shows the suspension by the rules before the change.
    let auditor = app.admin_token(Role::Auditor).await;
    let (_, page) = app.api(Method::GET, "/v1/audit/events?system=sysa&kind=system.*", &auditor, None).await;
    let kinds: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let suspended_at = kinds.iter().position(|k| *k == "system.suspended").expect("a system.suspended event");
    assert!(kinds[suspended_at..].contains(&"system.changed"), "{cure:?}: suspension first: {kinds:?}");
    report_refused("governance");
}

#[tokio::test]
async fn a_lapse_is_not_cured_by_an_apply_through_the_server() {
    a_lapse_is_not_cured_by(Cure::CatalogApi).await;
}

#[tokio::test]
async fn a_lapse_is_not_cured_by_an_apply_on_the_database() {
    a_lapse_is_not_cured_by(Cure::LocalApply).await;
}

#[tokio::test]
async fn a_lapse_is_not_cured_by_an_operator_change() {
    a_lapse_is_not_cured_by(Cure::Patch).await;
}

#[tokio::test]
async fn a_lapse_is_not_cured_by_the_bootstrap_catalog_at_start() {
    a_lapse_is_not_cured_by(Cure::Bootstrap).await;
}

/// A departure written in a catalog suspends at once, as the API's does;
/// an owner swap applied right after cures nothing.
#[tokio::test]
async fn a_departure_in_a_catalog_suspends_at_once_and_a_swap_after_it_cures_nothing() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let until = at(&app, Duration::from_secs(30 * 86400));
    let (status, body) = apply_via_api(&app, &operator, &catalog(&until, "active", "eve")).await;
    assert_eq!(status, 200, "{body}");
    let (jwt, secret) = credentials(&app).await;

    let (status, body) = apply_via_api(&app, &operator, &catalog(&until, "departed", "eve")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(system_state(&app, &operator, "sysa").await["state"], "suspended", "no reaper pass was needed");
    refused_one();
    let (status, body) = apply_via_api(&app, &operator, &catalog(&until, "departed", "gail")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(system_state(&app, &operator, "sysa").await["state"], "suspended");
    assert!(inactive(&app, &introspector, &[&jwt, &secret]).await);
    refused_one();
    // A departure is final, in a catalog too.
    let (status, body) = apply_via_api(&app, &operator, &catalog(&until, "active", "gail")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("departed"), "{body}");
    refused_one();
    report_refused("governance");
}

/// Production keeps what production requires for as long as it lasts:
/// changes that would break it are refused, naming the failed checks, and
/// recorded; a catalog cannot put a system into production at all.
#[tokio::test]
async fn production_requirements_hold_after_promotion() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let auditor = app.admin_token(Role::Auditor).await;
    assert_eq!(system_state(&app, &operator, "indexer").await["tier"], "production");

    let breaking: [(&str, Value, &str); 3] = [
        ("one person as both owners", json!({"technical_owner": "biz"}), "distinct_owners"),
        ("no classification", json!({"data_classification": ""}), "data_classification"),
        ("a blank classification", json!({"data_classification": "   "}), "data_classification"),
    ];
    for (what, patch, check) in breaking {
        let (status, body) = app.api(Method::PATCH, "/v1/systems/indexer", &operator, Some(patch)).await;
        assert_eq!(status, 409, "{what}: {body}");
        assert_eq!(body["error"], "production_invariant", "{what}: {body}");
        assert!(body["failed_checks"].to_string().contains(check), "{what}: {body}");
        refused_one();
    }
    // An owner of the same person under another address.
    let (status, body) = app
        .api(
            Method::POST,
            "/v1/owners",
            &operator,
            Some(json!({"id": "biz2", "display_name": "Biz again", "email": "biz+second@example.com"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        app.api(Method::PATCH, "/v1/systems/indexer", &operator, Some(json!({"technical_owner": "biz2"}))).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["failed_checks"].to_string().contains("distinct_owners"), "{body}");
    refused_one();
    // The last grant cannot go.
    let (status, body) = app.api(Method::DELETE, "/v1/systems/indexer/grants/indexer-spire", &operator, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["failed_checks"].to_string().contains("grants"), "{body}");
    refused_one();
    assert_eq!(system_state(&app, &operator, "indexer").await["state"], "active", "nothing of it was written");

    // A catalog can neither create a production system nor promote one.
    let created = default_catalog().replace("tier = \"pilot\"\npilot_ends_at = \"30d\"", "tier = \"production\"")
        + "\n[[systems]]\nid = \"fresh\"\nname = \"F\"\npurpose = \"p\"\nbusiness_owner = \"biz\"\n\
           technical_owner = \"tech\"\ntier = \"production\"\ndata_classification = \"internal\"\n";
    let (status, body) = apply_via_api(&app, &operator, &created).await;
    assert_eq!(status, 409, "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("system fresh") && description.contains("promote"), "{body}");
    assert!(description.contains("system summarizer"), "moving a pilot to production is refused too: {body}");
    refused_one();
    let (status, body) = app.api(Method::GET, "/v1/systems/fresh", &operator, None).await;
    assert_eq!(status, 404, "{body}");

    // The indexer's catalog entry may still say pilot: it describes the
    // system, and promotion moved it on.
    let (status, body) = apply_via_api(&app, &operator, &default_catalog()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(system_state(&app, &operator, "indexer").await["tier"], "production");

    // Every refusal is recorded with its actor and reason.
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=system.refused", &auditor, None).await;
    let refusals = page["events"].as_array().unwrap();
    assert_eq!(refusals.len(), 4, "{page}");
    assert!(refusals.iter().all(|e| e["actor"].as_str().unwrap().contains("operator") && e["outcome"] == "denied"));
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=grant.refused", &auditor, None).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=catalog.refused", &auditor, None).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    report_refused("governance");
}

/// A production system that lost what production requires outside any
/// change halflife made (rows written by an older version) is suspended
/// by the next pass, like a lapse.
#[tokio::test]
async fn a_production_system_without_its_requirements_is_suspended() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let token =
        app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api")]).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
    app.sql("UPDATE systems SET data_classification = NULL WHERE id = 'indexer'").await;
    let report = app.reap().await;
    assert!(
        report.suspended.iter().any(|(s, why)| s == "indexer" && why.contains("data_classification")),
        "{report:?}"
    );
    assert_eq!(app.introspect(&introspector, &token).await, json!({"active": false}));
    // It cannot be reinstated until it has them again.
    let (status, body) = app.api(Method::POST, "/v1/systems/indexer/reinstate", &operator, None).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("production_invariant")), "{body}");
    refused_one();
    report_refused("governance");
}

/// Separation of duties compares names as people read them.
#[tokio::test]
async fn look_alike_names_do_not_pass_separation_of_duties() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let admin = app.admin_token(Role::Admin).await;
    let auditor = app.admin_token(Role::Auditor).await;
    for (id, name, email) in [
        ("dana", "Dana Smith", "Dana.Smith@Example.com"),
        ("sam", "Sam", "sam@example.com"),
        ("ivan", "Ivan", "ivan@example.com"),
    ] {
        let (status, body) = app
            .api(Method::POST, "/v1/owners", &operator, Some(json!({"id": id, "display_name": name, "email": email})))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    for (system, business, technical) in [("dsys", "dana", "tech"), ("ssys", "sam", "ivan")] {
        let (status, body) = app
            .api(
                Method::POST,
                "/v1/systems",
                &operator,
                Some(json!({"id": system, "name": system, "purpose": "p", "business_owner": business,
                            "technical_owner": technical, "tier": "pilot",
                            "pilot_ends_at": at(&app, Duration::from_secs(10 * 86400)), "data_classification": "internal"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = app
            .api(
                Method::POST,
                &format!("/v1/systems/{system}/grants"),
                &operator,
                Some(json!({"id": format!("{system}-g"), "issuer": "k8s", "subject": format!("sa:{system}"),
                            "audiences": ["a"], "max_ttl": "5m"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    // Names that hide or disguise characters are refused when a token is
    // created...
    for name in ["dana\u{200b}", "d\u{0430}n\u{0430}", "da\u{00ad}na", "dana\u{202e}"] {
        let (status, body) =
            app.api(Method::POST, "/v1/admin-tokens", &admin, Some(json!({"role": "operator", "name": name}))).await;
        assert_eq!((status, body["field"].as_str()), (400, Some("name")), "{name:?}: {body}");
        refused_one();
    }
    // ...and people whose identity provider names them by a look-alike
    // of an owner (as subject or email) cannot approve their owner's
    // promotion.
    for (system, subject, email) in [
        ("dsys", "u-1", "dana.smith+approve@example.com"),
        ("dsys", "dana\u{200b}", "x1@corp.example"),
        ("dsys", "ｄａｎａ", "x2@corp.example"),
        ("dsys", "d\u{0430}n\u{0430}", "x3@corp.example"),
        ("dsys", "da\u{00ad}na", "x4@corp.example"),
        ("dsys", "DANA SMITH", "x5@corp.example"),
        ("dsys", "u-2", "DANA.SMITH@EXAMPLE.COM"),
        ("ssys", "ſam", "x6@corp.example"),
        ("ssys", "İvan", "x7@corp.example"),
    ] {
        let token = app.session_of(&app.id_token_as(subject, email, &["hl-operators"])).await;
        let (status, body) = app.api(Method::POST, &format!("/v1/systems/{system}/promote"), &token, None).await;
        assert_eq!(status, 409, "{subject:?} {email:?} approved {system}: {body}");
        assert!(body["failed_checks"].to_string().contains("owns this system"), "{subject:?}: {body}");
        refused_one();
    }
    // An automation token approves nothing, whatever it is called.
    for name in ["release-manager", "carol"] {
        let token = app.admin_token_named(Role::Operator, name).await;
        let (status, body) = app.api(Method::POST, "/v1/systems/ssys/promote", &token, None).await;
        assert_eq!(status, 409, "{name:?}: {body}");
        assert!(body["failed_checks"].to_string().contains("needs a person"), "{name:?}: {body}");
        refused_one();
    }
    // A person who owns neither system approves.
    let release = app.person_token("release@corp.example", &["hl-operators"]).await;
    let (status, body) = app.api(Method::POST, "/v1/systems/ssys/promote", &release, None).await;
    assert_eq!(status, 200, "{body}");
    // The trail shows the hidden character.
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=system.promotion_refused", &auditor, None).await;
    assert!(
        page["events"].as_array().unwrap().iter().any(|e| e["actor"].as_str().unwrap().contains("dana\\u{200b}")),
        "{page}"
    );

    // Owners' addresses: a tag, an invisible or a foreign letter do not
    // make a second person.
    for (id, email, refused_at_creation) in [
        ("dana-tech", "dana.smith+tech@example.com", false),
        ("dana-zw", "dana.smith\u{200b}@example.com", true),
        ("dana-cy", "d\u{0430}na.smith@example.com", true),
    ] {
        let (status, body) = app
            .api(Method::POST, "/v1/owners", &operator, Some(json!({"id": id, "display_name": "D", "email": email})))
            .await;
        if refused_at_creation {
            assert_eq!((status, body["field"].as_str()), (400, Some("email")), "{email:?}: {body}");
        } else {
            assert_eq!(status, 201, "{body}");
            let (status, body) =
                app.api(Method::PATCH, "/v1/systems/dsys", &operator, Some(json!({"technical_owner": id}))).await;
            assert_eq!(status, 200, "{body}");
            let (status, body) = app.api(Method::POST, "/v1/systems/dsys/promote", &operator, None).await;
            assert_eq!(status, 409, "{body}");
            assert!(body["failed_checks"].to_string().contains("distinct_owners"), "{email:?}: {body}");
        }
        refused_one();
    }
    report_refused("governance");
}

/// A pilot lasts at most `lifecycle.max_pilot` from when it entered its
/// tier, however often its end moves; a new period needs a reinstatement
/// with a reason, and the trail says so.
#[tokio::test]
async fn a_pilot_cannot_be_kept_alive_by_moving_its_end() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let auditor = app.admin_token(Role::Auditor).await;
    let day = Duration::from_secs(86400);
    // summarizer entered its pilot at start; max_pilot is 90 days.
    app.clock.advance(20 * day);
    let (status, body) = app
        .api(Method::PATCH, "/v1/systems/summarizer", &operator, Some(json!({"pilot_ends_at": at(&app, 60 * day)})))
        .await;
    assert_eq!(status, 200, "within its 90 days: {body}");
    app.clock.advance(50 * day);
    let (status, body) = app
        .api(Method::PATCH, "/v1/systems/summarizer", &operator, Some(json!({"pilot_ends_at": at(&app, 25 * day)})))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("pilot_ends_at")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("max_pilot"), "{body}");
    refused_one();
    // Not through a catalog either.
    let moved = default_catalog().replacen(
        "pilot_ends_at = \"30d\"",
        &format!("pilot_ends_at = \"{}\"", at(&app, 25 * day)),
        1,
    );
    let (status, body) = apply_via_api(&app, &operator, &moved).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("max_pilot"), "{body}");
    refused_one();

    // A new period: suspend, then reinstate with a reason.
    app.api(Method::POST, "/v1/systems/summarizer/suspend", &operator, Some(json!({"reason": "review"}))).await;
    let renew = |reason: Option<&str>| {
        let mut body = json!({"pilot_ends_at": at(&app, 80 * day)});
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        body
    };
    let (status, body) = app.api(Method::POST, "/v1/systems/summarizer/reinstate", &operator, Some(renew(None))).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("reason")), "{body}");
    refused_one();
    let (status, body) = app
        .api(Method::POST, "/v1/systems/summarizer/reinstate", &operator, Some(renew(Some("phase two approved"))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tier_started_at"], json!(halflife::domain::rfc3339(app.clock.now())));
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=system.reinstated", &auditor, None).await;
    let event = &page["events"][0];
    assert_eq!(event["reason"], "phase two approved");
    assert_eq!(event["detail"]["new_period"], true);
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=system.refused", &auditor, None).await;
    assert!(
        page["events"].as_array().unwrap().iter().any(|e| e["detail"]["action"] == "reinstate"),
        "a refused reinstatement is recorded: {page}"
    );
    report_refused("governance");
}

/// Changes through the server name the caller; changes on the database
/// name the operating-system user and host, never `$USER`; catalog events
/// carry the owners before and after; refusals are recorded.
#[tokio::test]
async fn catalog_changes_are_attributed() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.person_token("carol@corp.example", &["hl-operators"]).await;
    let carol = format!("carol@corp.example (operator; person sub-carol at {PEOPLE_ISS})");
    let auditor = app.admin_token(Role::Auditor).await;
    let until = at(&app, Duration::from_secs(30 * 86400));
    let (status, body) = apply_via_api(&app, &operator, &catalog(&until, "active", "eve")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = apply_via_api(&app, &operator, &catalog(&until, "active", "gail")).await;
    assert_eq!(status, 200, "{body}");
    let (_, page) = app.api(Method::GET, "/v1/audit/events?owner=eve&kind=system.changed", &auditor, None).await;
    let event = &page["events"][0];
    assert_eq!(event["actor"], carol.as_str(), "{page}");
    assert_eq!(event["owners"], "gail frank eve", "the owners after, then those the change removed: {event}");
    assert_eq!(event["detail"]["owners_before"], "eve frank");
    let (_, page) = app.api(Method::GET, "/v1/audit/events?owner=eve&kind=grant.*", &auditor, None).await;
    assert_eq!(page["events"][0]["kind"], "grant.created", "grant events name the system's owners: {page}");

    // A recertification of a departed owner, a PATCH of a missing owner,
    // and a refused apply are each recorded as refused.
    app.api(Method::POST, "/v1/owners/eve/depart", &operator, None).await;
    let (status, _) = app.api(Method::POST, "/v1/owners/eve/recertify", &operator, None).await;
    assert_eq!(status, 409);
    let (status, _) =
        app.api(Method::PATCH, "/v1/systems/sysa", &operator, Some(json!({"technical_owner": "nobody"}))).await;
    assert_eq!(status, 404);
    for kind in ["owner.refused", "system.refused"] {
        let (_, page) = app.api(Method::GET, &format!("/v1/audit/events?kind={kind}"), &auditor, None).await;
        let event = &page["events"][0];
        assert_eq!(event["actor"], carol.as_str(), "{kind}: {page}");
        assert!(!event["reason"].as_str().unwrap_or_default().is_empty(), "{kind}: {page}");
        refused_one();
    }

    // `halflife apply --local` names who ran it from the process itself.
    let dir = app.dir.path();
    let renamed = catalog(&until, "departed", "gail").replace("display_name = \"Gail\"", "display_name = \"Gail G.\"");
    std::fs::write(dir.join("local.toml"), renamed).unwrap();
    std::fs::write(
        dir.join("local-config.toml"),
        format!("[database]\nurl = \"{}\"\n\n{}", app.db_url(), local_config_text()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_halflife"))
        .args(["--config", dir.join("local-config.toml").to_str().unwrap(), "apply", "--local", "-f"])
        .arg(dir.join("local.toml"))
        .env("USER", "lifecycle")
        .env_remove("HALFLIFE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=owner.*", &auditor, None).await;
    let last = page["events"].as_array().unwrap().last().unwrap().clone();
    let actor = last["actor"].as_str().unwrap();
    assert!(actor.starts_with("local:") && actor.contains("uid="), "{actor}");
    assert!(!actor.contains("lifecycle"), "the environment does not name the actor: {actor}");
    refused_one();
    report_refused("governance");
}

fn local_config_text() -> String {
    format!(
        "[keys]\nkek = \"{}\"\n[dev]\nenabled = true\n[[issuers]]\nname = \"k8s\"\nissuer = \"{RSA_ISS}\"\n\
         jwks_file = \"/dev/null\"\naudience = \"{AUD}\"\n[[issuers]]\nname = \"spire\"\nissuer = \"{EC_ISS}\"\n\
         jwks_file = \"/dev/null\"\naudience = \"{AUD}\"\n",
        kek_b64()
    )
}

/// Removing a permission takes effect: a deleted grant revokes what was
/// issued under it (not other grants' credentials), a narrowed one too,
/// a widened one nothing, and an issuance decided on the old grant cannot
/// commit after the change.
#[tokio::test]
async fn removing_a_grant_revokes_what_was_issued_under_it() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let auditor = app.admin_token(Role::Auditor).await;
    let until = at(&app, Duration::from_secs(30 * 86400));
    let (status, body) = apply_via_api(&app, &operator, &catalog(&until, "active", "eve")).await;
    assert_eq!(status, 200, "{body}");
    let (jwt, secret) = credentials(&app).await;
    let other =
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await["access_token"].as_str().unwrap().to_owned();

    // Widening revokes nothing.
    let wider = catalog(&until, "active", "eve").replace(
        "scopes = [\"reports:read\", \"reports:write\"]",
        "scopes = [\"reports:read\", \"reports:write\", \"reports:admin\"]",
    );
    let (status, body) = apply_via_api(&app, &operator, &wider).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.introspect(&introspector, &jwt).await["active"], true);
    // Narrowing revokes what was issued under the wider grant.
    let narrower = catalog(&until, "active", "eve")
        .replace("scopes = [\"reports:read\", \"reports:write\"]", "scopes = [\"reports:read\"]");
    let (status, body) = apply_via_api(&app, &operator, &narrower).await;
    assert_eq!(status, 200, "{body}");
    assert!(inactive(&app, &introspector, &[&jwt, &secret]).await, "a narrowed grant's credentials stay active");
    refused_one();
    assert_eq!(app.introspect(&introspector, &other).await["active"], true, "another grant's credential");

    // New credentials under the narrowed grant, then the grant goes.
    let (jwt, secret) = {
        let jwt = app.exchange_ok(&app.rsa.token(AGENT, app.now()), &[("scope", "reports:read")]).await;
        let secret = app
            .exchange_ok(
                &app.rsa.token(AGENT, app.now()),
                &[("requested_token_type", SECRET), ("scope", "reports:read")],
            )
            .await;
        (jwt["access_token"].as_str().unwrap().to_owned(), secret["access_token"].as_str().unwrap().to_owned())
    };
    let (status, body) = app.api(Method::DELETE, "/v1/systems/sysa/grants/sysa-agent", &operator, None).await;
    assert_eq!((status, &body["revoked"]), (200, &json!(2)), "{body}");
    assert!(inactive(&app, &introspector, &[&jwt, &secret]).await, "a deleted grant's credentials stay active");
    refused_one();
    assert_eq!(app.introspect(&introspector, &other).await["active"], true, "another grant's credential");
    let jti = parts(&jwt).1["jti"].as_str().unwrap().to_owned();
    let (_, story) = app.api(Method::GET, &format!("/v1/credentials/{jti}"), &auditor, None).await;
    assert_eq!(story["credential"]["revoked_by"], "grant", "{story}");
    assert_eq!(story["credential"]["revoked_by_grant"], "sysa-agent", "{story}");
    let (_, listed) = app.api(Method::GET, "/v1/systems/sysa/credentials", &auditor, None).await;
    assert_eq!(listed["credentials"], json!([]), "{listed}");

    // The grant comes back: only new credentials are active.
    let (status, body) = apply_via_api(&app, &operator, &narrower).await;
    assert_eq!(status, 200, "{body}");
    let fresh = app.exchange_ok(&app.rsa.token(AGENT, app.now()), &[("scope", "reports:read")]).await;
    assert_eq!(app.introspect(&introspector, fresh["access_token"].as_str().unwrap()).await["active"], true);
    assert!(inactive(&app, &introspector, &[&jwt, &secret]).await);
    // The revocations survive a restart (they are stored, not cached).
    let app = app.restart().await;
    let introspector = app.admin_token(Role::Introspector).await;
    assert!(inactive(&app, &introspector, &[&jwt, &secret]).await);
    assert_eq!(app.introspect(&introspector, fresh["access_token"].as_str().unwrap()).await["active"], true);
    report_refused("governance");
}

/// The commit-time check: an issuance decided on a grant that has since
/// been changed reaches the store after the change, and is refused.
#[tokio::test]
async fn an_issuance_decided_on_a_changed_grant_cannot_commit() {
    use halflife::store::{AuditEvent, IssueOutcome, Outcome, RequestMeta};
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let narrower = default_catalog().replace("scopes = [\"docs:read\", \"search:write\"]", "scopes = [\"docs:read\"]");
    let (status, body) = apply_via_api(&app, &operator, &narrower).await;
    assert_eq!(status, 200, "{body}");
    let now = app.clock.now();
    let issuance = halflife::store::Issuance {
        jti: "0193b8f0-7c1e-7a6b-9d55-0e1f2a3b4c5d".into(),
        kind: halflife::domain::values::CredentialKind::Jwt,
        system_id: halflife::domain::values::SystemId::parse("indexer").unwrap(),
        grant_id: halflife::domain::values::GrantId::parse("indexer-spire").unwrap(),
        grant_version: 0,
        issuer: "spire".into(),
        subject: EC_SUBJECT.into(),
        principal: None,
        audience: "docs-api".into(),
        scopes: "search:write".into(),
        iat: now,
        exp: now + Duration::from_secs(300),
        replay: Vec::new(),
        secret_hash: None,
        db_role: None,
        approval: None,
        event: AuditEvent::new("credential.issued", Outcome::Success, now, &RequestMeta::default()),
    };
    let outcome = app.broker.log.record_issuance(issuance).await.unwrap();
    assert_eq!(outcome, IssueOutcome::GrantChanged);
    assert_eq!(app.credential_count().await, 0);
    let denied = app.events("credential.denied").await;
    assert!(denied.last().unwrap().reason.as_deref().unwrap().contains("grant"), "{denied:?}");
    refused_one();
    report_refused("governance");
}

/// Two replicas of one database: a lapse seen through one cannot be cured
/// through the other, and the credentials stay inactive on both.
#[tokio::test]
async fn a_lapse_is_not_cured_through_another_replica() {
    let Some(first) = spawn_app().await else { return };
    let second = first.replica().await;
    let operator = first.admin_token(Role::Operator).await;
    let introspector = first.admin_token(Role::Introspector).await;
    let eve_until = at(&first, Duration::from_secs(10));
    let (status, body) = apply_via_api(&first, &operator, &catalog(&eve_until, "active", "eve")).await;
    assert_eq!(status, 200, "{body}");
    let (jwt, secret) = credentials(&first).await;
    first.clock.advance(Duration::from_secs(20));
    assert!(inactive(&first, &introspector, &[&jwt, &secret]).await);

    let (status, body) = apply_via_api(&second, &operator, &catalog(&eve_until, "active", "gail")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["suspended"].to_string().contains("sysa"), "{body}");
    for app in [&first, &second] {
        let inactive_here = eventually(Duration::from_secs(3), || async {
            inactive(app, &introspector, &[&jwt, &secret]).await
                && system_state(app, &operator, "sysa").await["state"] == "suspended"
        })
        .await;
        assert!(inactive_here, "on {}", app.base);
    }
    refused_one();
    report_refused("governance");
}

//! The audit trail: every decision recorded, hash-chained, queryable,
//! exportable and verifiable — and any tampering named by sequence number.

use std::process::Command;

use halflife::clock::Clock;
use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_halflife");

async fn verify(app: &TestApp, auditor: &str) -> Value {
    let (status, report) = app.api(Method::GET, "/v1/audit/verify", auditor, None).await;
    assert_eq!(status, 200, "{report}");
    report
}

/// Some traffic: issued, denied and revoked credentials.
async fn traffic(app: &TestApp, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for _ in 0..n {
        let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
        let _ = app.exchange(&app.rsa.token(RSA_SUBJECT, app.now()), &[("scope", "admin")]).await;
    }
    tokens
}

#[tokio::test]
async fn operator_actions_are_recorded_with_their_actor_and_owners() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let auditor = app.admin_token(Role::Auditor).await;
    let kinds = |v: &Value| -> Vec<String> {
        v["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect()
    };

    // Start-up and bootstrap events.
    let (_, page) = app.api(Method::GET, "/v1/audit/events?limit=1000", &auditor, None).await;
    let startup = kinds(&page);
    for kind in ["key.created", "owner.created", "system.created", "grant.created", "admin_token.created"] {
        assert!(startup.contains(&kind.to_owned()), "{kind} missing from {startup:?}");
    }

    let now = halflife::domain::rfc3339(app.clock.now() + std::time::Duration::from_secs(86400));
    app.api(
        Method::POST,
        "/v1/owners",
        &operator,
        Some(json!({"id": "ana", "display_name": "Ana", "email": "ana@example.com"})),
    )
    .await;
    app.api(Method::POST, "/v1/owners/ana/recertify", &operator, None).await;
    app.api(
        Method::POST,
        "/v1/systems",
        &operator,
        Some(json!({"id": "tmp", "name": "Tmp", "purpose": "p", "business_owner": "ana", "technical_owner": "tech", "pilot_ends_at": now})),
    )
    .await;
    app.api(Method::PATCH, "/v1/systems/tmp", &operator, Some(json!({"purpose": "q"}))).await;
    app.api(
        Method::POST,
        "/v1/systems/tmp/grants",
        &operator,
        Some(json!({"id": "tmp-g", "issuer": "k8s", "subject": "x", "audiences": ["a"], "max_ttl": "5m"})),
    )
    .await;
    app.api(Method::DELETE, "/v1/systems/tmp/grants/tmp-g", &operator, None).await;
    let (status, _) = app.api(Method::POST, "/v1/systems/tmp/retire", &operator, Some(json!({"reason": "done"}))).await;
    assert_eq!(status, 200);

    for (kind, actor_part) in [
        ("owner.created", "operator"),
        ("owner.recertified", "operator"),
        ("system.changed", "operator"),
        ("grant.deleted", "operator"),
        ("system.retired", "operator"),
    ] {
        let (_, page) = app.api(Method::GET, &format!("/v1/audit/events?kind={kind}"), &auditor, None).await;
        let last = page["events"].as_array().unwrap().last().unwrap_or_else(|| panic!("no {kind}")).clone();
        assert!(last["actor"].as_str().unwrap().contains(actor_part), "{kind}: {last}");
    }
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=system.retired", &auditor, None).await;
    assert_eq!(page["events"][0]["owners"], "ana tech", "the owners at that moment");
    assert_eq!(page["events"][0]["reason"], "done");
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=credential.revoked", &auditor, None).await;
    let by: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| e["detail"]["by"].as_str().unwrap()).collect();
    assert_eq!(by, ["grant.deleted", "system.retired"], "each revocation names what caused it");

    // Issuance names the owners too; the whole log verifies.
    app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=credential.issued", &auditor, None).await;
    assert_eq!(page["events"][0]["owners"], "biz tech");
    assert_eq!(verify(&app, &auditor).await["ok"], true);
}

#[tokio::test]
async fn verification_names_the_first_altered_deleted_swapped_or_truncated_event() {
    type Tamper = (&'static str, &'static str, i64);
    let cases: [Tamper; 6] = [
        (
            "altered",
            "INSERT INTO audit_names (name) VALUES ('mallory'); \
             UPDATE audit_events SET actor_id = (SELECT id FROM audit_names WHERE name = 'mallory') WHERE seq = 12",
            12,
        ),
        ("detail altered", "UPDATE audit_events SET detail = '{\"kind\":\"jwt\"}' WHERE seq = 12", 12),
        ("re-timed", "UPDATE audit_events SET time_ms = time_ms - 3600000 WHERE seq = 12", 12),
        ("deleted", "DELETE FROM audit_events WHERE seq = 12", 12),
        (
            "swapped",
            "UPDATE audit_events SET seq = CASE seq WHEN 12 THEN -13 WHEN 13 THEN -12 END WHERE seq IN (12, 13); \
             UPDATE audit_events SET seq = -seq WHERE seq < 0",
            12,
        ),
        ("truncated", "DELETE FROM audit_events WHERE seq > 14", 15),
    ];
    for (name, sql, seq) in cases {
        let Some(app) = spawn_app().await else { return };
        let auditor = app.admin_token(Role::Auditor).await;
        traffic(&app, 5).await;
        let checkpoint = app.broker.write_checkpoint(app.clock.now()).await.unwrap().unwrap();
        assert!(checkpoint.seq > 15, "the checkpoint must cover the tail");
        let report = verify(&app, &auditor).await;
        assert_eq!(report["ok"], true, "untouched log must verify: {report}");
        assert_eq!(report["checkpoints_checked"], 1);

        // The log refuses changes; an attacker with the file drops the
        // guards first, and the chain still gives them away.
        let mut db = app.raw().await;
        // Nor can a name that events share be changed or removed.
        for refused in [
            "DELETE FROM audit_events WHERE seq = 3",
            "UPDATE audit_events SET reason = 'x' WHERE seq = 3",
            "UPDATE audit_names SET name = 'x' WHERE id = 1",
            "DELETE FROM audit_names WHERE id = 1",
        ] {
            let error = db.execute(refused).await.unwrap_err().to_string();
            assert!(error.contains("append-only"), "{refused}: {error}");
        }
        if postgres() {
            app.sql("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only").await;
        } else {
            app.sql("DROP TRIGGER audit_events_no_update").await;
            app.sql("DROP TRIGGER audit_events_no_delete").await;
        }
        for statement in sql.split("; ") {
            app.sql(statement).await;
        }
        let report = verify(&app, &auditor).await;
        assert_eq!(report["ok"], false, "{name} went unnoticed");
        assert_eq!(report["first_problem"]["seq"], seq, "{name}: {report}");
    }
}

#[tokio::test]
async fn filters_match_exactly_resist_injection_and_paginate_once() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.admin_token(Role::Auditor).await;
    let tokens = traffic(&app, 3).await;
    app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api")]).await;
    let jti = parts(&tokens[1]).1["jti"].as_str().unwrap().to_owned();

    let all_events = {
        let (_, page) = app.api(Method::GET, "/v1/audit/events?limit=1000", &auditor, None).await;
        page["events"].as_array().unwrap().clone()
    };
    let expect = |pred: &dyn Fn(&Value) -> bool| -> Vec<i64> {
        all_events.iter().filter(|e| pred(e)).map(|e| e["seq"].as_i64().unwrap()).collect()
    };
    let got = |page: &Value| -> Vec<i64> {
        page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect()
    };

    for (query, pred) in [
        ("system=indexer", Box::new(|e: &Value| e["system_id"] == "indexer") as Box<dyn Fn(&Value) -> bool>),
        ("owner=biz", Box::new(|e: &Value| e["owners"].as_str().is_some_and(|o| o.split(' ').any(|x| x == "biz")))),
        ("workload=system:serviceaccount:ai:summarizer", Box::new(|e: &Value| e["subject"] == RSA_SUBJECT)),
        ("kind=credential.denied", Box::new(|e: &Value| e["kind"] == "credential.denied")),
        ("kind=credential.*", Box::new(|e: &Value| e["kind"].as_str().unwrap().starts_with("credential."))),
        ("outcome=denied", Box::new(|e: &Value| e["outcome"] == "denied")),
        (&*format!("jti={jti}"), Box::new(|e: &Value| e["jti"] == jti.as_str())),
        (
            &*format!("issuer={}&workload={}", RSA_ISS, RSA_SUBJECT),
            Box::new(|e: &Value| e["subject"] == RSA_SUBJECT && e["attestation_issuer"] == RSA_ISS),
        ),
        ("since=1h&until=2999-01-01T00:00:00Z", Box::new(|_: &Value| true)),
    ] {
        let (status, page) =
            app.api(Method::GET, &format!("/v1/audit/events?limit=1000&{query}"), &auditor, None).await;
        assert_eq!(status, 200, "{query}: {page}");
        let want = expect(&pred);
        assert!(!want.is_empty(), "{query} matches nothing: a useless check");
        assert_eq!(got(&page), want, "{query}");
    }
    for evil in ["' OR 1=1--", "%", "_", "biz%", "\" OR \"\"=\""] {
        let encoded: String = form_urlencoded::byte_serialize(evil.as_bytes()).collect();
        for field in ["system", "owner", "workload", "kind", "jti"] {
            let (status, page) =
                app.api(Method::GET, &format!("/v1/audit/events?{field}={encoded}"), &auditor, None).await;
            if field == "owner" {
                // Not an owner id at all: refused outright.
                assert_eq!(status, 400, "{field}={evil}");
                assert_eq!(page["field"], "owner");
                continue;
            }
            assert_eq!(status, 200);
            assert_eq!(page["events"].as_array().unwrap().len(), 0, "{field}={evil} returned events");
        }
    }
    let (status, body) = app.api(Method::GET, "/v1/audit/events?bogus=1", &auditor, None).await;
    assert_eq!(status, 400, "unknown filters are rejected: {body}");
    let (status, _) = app.api(Method::GET, "/v1/audit/events?limit=1001", &auditor, None).await;
    assert_eq!(status, 400);
    let (status, _) = app.api(Method::GET, "/v1/audit/events?since=yesterday", &auditor, None).await;
    assert_eq!(status, 400);

    // Keyset pagination returns every event exactly once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = app.api(Method::GET, &format!("/v1/audit/events?limit=3{cursor}"), &auditor, None).await;
        seen.extend(got(&page));
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, expect(&|_| true));

    // Introspectors and workloads cannot read the log.
    let introspector = app.admin_token(Role::Introspector).await;
    assert_eq!(app.api(Method::GET, "/v1/audit/events", &introspector, None).await.0, 403);
}

#[tokio::test]
async fn a_credentials_story_shows_issuance_attestation_and_revocation() {
    let Some(app) = spawn_app().await else { return };
    let operator = app.admin_token(Role::Operator).await;
    let auditor = app.admin_token(Role::Auditor).await;
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let body = app.exchange_ok(&attestation, &[]).await;
    let claims = parts(body["access_token"].as_str().unwrap()).1;
    let jti = claims["jti"].as_str().unwrap().to_owned();
    // The credential row leaves its grant, audience, scopes and iat to
    // its issuance event; listings and the story still show them.
    let mut raw = app.raw().await;
    let terms_in_the_event_only = format!(
        "SELECT COUNT(*) FROM credentials WHERE {} AND grant_id IS NULL AND audience IS NULL AND scopes IS NULL \
         AND iat IS NULL",
        raw.id_is("jti", &jti)
    );
    assert_eq!(raw.scalar(&terms_in_the_event_only).await, 1);
    drop(raw);
    let (status, listed) = app.api(Method::GET, "/v1/systems/summarizer/credentials", &operator, None).await;
    assert_eq!(status, 200, "{listed}");
    let listed = &listed["credentials"][0];
    assert_eq!(
        (&listed["jti"], &listed["grant_id"], &listed["audience"], &listed["scopes"]),
        (&json!(jti), &json!("summarizer-k8s"), &claims["aud"], &claims["scope"]),
        "{listed}"
    );
    app.api(Method::POST, "/v1/systems/summarizer/suspend", &operator, Some(json!({"reason": "incident 7"}))).await;

    let (status, story) = app.api(Method::GET, &format!("/v1/credentials/{jti}"), &auditor, None).await;
    assert_eq!(status, 200, "{story}");
    assert_eq!(story["credential"]["jti"], jti);
    let credential = &story["credential"];
    assert_eq!(
        (&credential["grant"], &credential["audience"], &credential["scopes"]),
        (&json!("summarizer-k8s"), &claims["aud"], &claims["scope"])
    );
    let iat = time::OffsetDateTime::from_unix_timestamp(claims["iat"].as_i64().unwrap()).unwrap();
    assert_eq!(credential["iat"], halflife::domain::rfc3339(iat));
    assert_eq!(story["credential"]["revoked"], true);
    assert_eq!(story["credential"]["revoked_by"], "system");
    assert_eq!(story["grant"]["id"], "summarizer-k8s");
    assert_eq!(story["events"][0]["kind"], "credential.issued");
    assert_eq!(story["events"][0]["attestation_id"], parts(&attestation).1["jti"]);
    let related: Vec<&str> = story["related"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(related.contains(&"system.suspended") && related.contains(&"credential.revoked"), "{related:?}");
    assert!(story["related"].as_array().unwrap().iter().any(|e| e["reason"] == "incident 7"));
    assert_eq!(app.api(Method::GET, "/v1/credentials/nope", &auditor, None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_parse_back_and_verify_offline() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.admin_token(Role::Auditor).await;
    traffic(&app, 3).await;
    app.broker.write_checkpoint(app.clock.now()).await.unwrap();
    // Bulk history: 100,000 more events (their hashes are not a chain; this
    // part checks export volume and fidelity, the verify part runs first).
    let dir = app.dir.path();
    let (jsonl, checkpoints, jwks) = (dir.join("audit.jsonl"), dir.join("checkpoints.json"), dir.join("jwks.json"));
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("HALFLIFE_URL", &app.base)
            .env("HALFLIFE_TOKEN", &auditor)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run(&["audit", "export", "--out", jsonl.to_str().unwrap(), "--checkpoints", checkpoints.to_str().unwrap()])
    });
    assert!(ok, "{err}");
    let keys = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap();
    std::fs::write(&jwks, keys).unwrap();
    let offline = |file: &std::path::Path| {
        let args = [
            "audit",
            "verify",
            "--file",
            file.to_str().unwrap(),
            "--checkpoints",
            checkpoints.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
        ];
        let out = Command::new(BIN).args(args).env_remove("HALFLIFE_TOKEN").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, out) = tokio::task::block_in_place(|| offline(&jsonl));
    assert!(ok, "{out}");
    assert!(out.starts_with("ok:"), "{out}");

    // The same log verified directly on its database, with no server and no
    // token: its checkpoints checked with the keys the database holds
    // (opened with the configuration's KEK), or with a saved JWKS.
    let config = dir.join("verify.toml");
    std::fs::write(&config, format!("[keys]\nkek = \"{}\"\nalgorithm = \"EdDSA\"\n[dev]\nenabled = true\n", kek_b64()))
        .unwrap();
    let on_database = |extra: &[&str]| {
        let mut args = vec!["--config", config.to_str().unwrap(), "audit", "verify", "--database"];
        let url = app.db_url();
        args.push(&url);
        args.extend_from_slice(extra);
        let out =
            Command::new(BIN).args(&args).env_remove("HALFLIFE_TOKEN").env_remove("HALFLIFE_URL").output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = tokio::task::block_in_place(|| on_database(&[]));
    assert!(ok && out.starts_with("ok:"), "{out}{err}");
    assert!(!out.contains(" 0 checkpoints"), "the checkpoints were checked: {out}");
    let (ok, out, err) = tokio::task::block_in_place(|| on_database(&["--jwks", jwks.to_str().unwrap()]));
    assert!(ok && out.starts_with("ok:"), "{out}{err}");
    // Alter one exported event: offline verification names it.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut event: Value = serde_json::from_str(&lines[6]).unwrap();
    event["reason"] = json!("nothing to see");
    lines[6] = event.to_string();
    let altered = dir.join("altered.jsonl");
    std::fs::write(&altered, lines.join("\n")).unwrap();
    let (ok, out) = tokio::task::block_in_place(|| offline(&altered));
    assert!(!ok);
    assert!(out.contains(&format!("FAILED at event {}", event["seq"])), "{out}");
    // Drop the tail below the checkpoint: detected as truncation.
    let cut = dir.join("cut.jsonl");
    let original: Vec<&str> = text.lines().collect();
    std::fs::write(&cut, original[..original.len() - 2].join("\n")).unwrap();
    let (ok, out) = tokio::task::block_in_place(|| offline(&cut));
    assert!(!ok && out.contains("truncated"), "{out}");

    let newline = if postgres() { "chr(10)" } else { "char(10)" };
    let hash = if postgres() { "decode('68', 'hex')" } else { "x'68'" };
    let jti = if postgres() { "halflife_id('jti-' || i)" } else { "'jti-' || i" };
    app.sql(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
         INSERT INTO audit_events (seq, time_ms, kind, outcome, reason, system_id, jti, detail, hash) \
         SELECT 1000 + i, 1700000000000 + i, 'credential.issued', 'success', 'bulk, \"quoted\"' || {newline} || 'line', \
         'indexer', {jti}, '{{\"n\":' || i || '}}', {hash} FROM n",
    ))
    .await;
    let total = app.scalar("SELECT COUNT(*) FROM audit_events").await;
    for format in ["jsonl", "csv"] {
        let file = dir.join(format!("all.{format}"));
        let (ok, _, err) = tokio::task::block_in_place(|| {
            run(&["audit", "export", "--out", file.to_str().unwrap(), "--format", format])
        });
        assert!(ok, "{err}");
        let records: Vec<Value> = if format == "jsonl" {
            std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        } else {
            let mut reader = csv::Reader::from_path(&file).unwrap();
            let headers = reader.headers().unwrap().clone();
            reader
                .records()
                .map(|r| {
                    let r = r.unwrap();
                    Value::Object(headers.iter().zip(r.iter()).map(|(h, v)| (h.to_owned(), json!(v))).collect())
                })
                .collect()
        };
        assert_eq!(records.len() as i64, total, "{format}");
        let bulk = records.iter().find(|r| r["seq"] == json!(1500) || r["seq"] == json!("1500")).unwrap();
        assert_eq!(bulk["reason"], "bulk, \"quoted\"\nline", "{format}");
        assert_eq!(bulk["jti"], "jti-500", "{format}");
        let seqs: std::collections::BTreeSet<String> =
            records.iter().map(|r| r["seq"].to_string().replace('"', "")).collect();
        assert_eq!(seqs.len() as i64, total, "{format}: every event exactly once");
    }
}

#[tokio::test]
async fn no_secret_reaches_the_audit_log_or_its_exports() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let token = app.exchange_ok(&attestation, &[]).await["access_token"].as_str().unwrap().to_owned();
    let _ = app.introspect(&admin, &token).await;
    app.client.post(app.url("/oauth2/revoke")).form(&[("token", &token)]).send().await.unwrap();
    let forged = TestIssuer::rsa(RSA_ISS).token(RSA_SUBJECT, app.now());
    let _ = app.exchange(&forged, &[]).await;
    let (_, created) =
        app.api(Method::POST, "/v1/admin-tokens", &admin, Some(json!({"role": "auditor", "name": "canary"}))).await;
    let canary_admin = created["token"].as_str().unwrap().to_owned();

    let export = app
        .client
        .get(app.url("/v1/audit/events?format=jsonl"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut dump = String::new();
    for f in ["halflife.db", "halflife.db-wal"] {
        if let Ok(bytes) = std::fs::read(app.dir.path().join(f)) {
            dump.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    let signature_of = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    for (name, secret) in [
        ("access token", signature_of(&token)),
        ("attestation", signature_of(&attestation)),
        ("forged attestation", signature_of(&forged)),
        ("admin token", admin.trim_start_matches("hla_").to_owned()),
        ("new admin token", canary_admin.trim_start_matches("hla_").to_owned()),
    ] {
        assert!(!export.contains(&secret), "{name} in the export");
        assert!(!dump.contains(&secret), "{name} in the database");
    }
    assert!(export.lines().count() > 5);
}

/// Hashes became 32 stored bytes, and `prev_hash` is read from the event
/// before instead of stored (SQLite migration 0013, PostgreSQL 0009); then
/// repeated strings moved to `audit_names` (SQLite 0016, PostgreSQL 0012).
/// A log chained before those upgrades keeps every value and hash, so it
/// and the checkpoints signed over it still verify, an event altered
/// before the upgrade is still reported, and queries by workload, issuer
/// and owner still find its events.
#[tokio::test]
async fn a_chain_written_before_the_compact_layouts_still_verifies() {
    use halflife::audit::{AuditEvent, AuditRecord, ChainVerifier, GENESIS, Outcome, RequestMeta};
    use time::OffsetDateTime;

    let dir = tempfile::tempdir().unwrap();
    let Some(db) = TestDb::create(dir.path()).await else { return };
    db.migrate_before(dir.path(), 13, 9).await;
    let url = db.url();

    // Four events as the old layout held them: hex text, prev_hash stored.
    // Their ids take every form: a UUID in canonical form (stored as 16
    // bytes from SQLite 0017 and PostgreSQL 0014 on), one in capitals and
    // ones that are no UUID (kept as text), one of them 16 bytes long.
    let ids = [
        "jti-1",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5C",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d",
    ];
    let request_ids =
        ["0190a1b2-0000-7000-8000-000000000001", "request-00000002", "0190a1b2-0000-7000-8000-000000000003", "r"];
    let mut prev = GENESIS.to_owned();
    let mut hashes = Vec::new();
    let mut rows = Vec::new();
    for seq in 1..=4_i64 {
        let time =
            OffsetDateTime::from_unix_timestamp_nanos((1_700_000_000_000 + i128::from(seq)) * 1_000_000).unwrap();
        let mut e = AuditEvent::new("credential.issued", Outcome::Success, time, &RequestMeta::default());
        e.actor = Some(format!("workload-{seq}"));
        e.system_id = Some("indexer".into());
        e.owners = Some(if seq == 1 { "biz" } else { "biz tech" }.into());
        e.source = Some("10.0.0.7".into());
        e.attestation_issuer = Some(format!("https://issuer-{}.example", seq % 2));
        e.subject = Some(format!("spiffe://example/w{}", seq % 2));
        e.audience = Some("reports-api".into());
        e.scopes = Some("reports:read".into());
        e.jti = Some(ids[seq as usize - 1].into());
        e.request_id = Some(request_ids[seq as usize - 1].into());
        e.attestation_id = Some(ids[4 - seq as usize].into());
        e.detail = Some(json!({"kind": "jwt"}));
        let (record, _) = AuditRecord::seal(seq, e, prev.clone());
        let event = &record.event;
        // Event 4 is altered after sealing, as someone with the file could.
        let actor = if seq == 4 { "mallory".to_owned() } else { event.actor.clone().unwrap() };
        rows.push(format!(
            "({seq}, {}, 'credential.issued', 'success', '{actor}', 'indexer', '{}', '10.0.0.7', '{}', '{}', \
             'reports-api', 'reports:read', '{}', '{}', '{}', '{{\"kind\":\"jwt\"}}', '{prev}', '{}')",
            record.time_ms,
            event.owners.as_deref().unwrap(),
            event.attestation_issuer.as_deref().unwrap(),
            event.subject.as_deref().unwrap(),
            event.jti.as_deref().unwrap(),
            event.request_id.as_deref().unwrap(),
            event.attestation_id.as_deref().unwrap(),
            record.hash
        ));
        prev.clone_from(&record.hash);
        hashes.push(record.hash);
    }
    let mut raw = db.raw().await;
    raw.execute(&format!(
        "INSERT INTO audit_events (seq, time_ms, kind, outcome, actor, system_id, owners, source, attestation_issuer, \
         subject, audience, scopes, jti, request_id, attestation_id, detail, prev_hash, hash) VALUES {}",
        rows.join(", ")
    ))
    .await
    .unwrap();
    // A credential of that time, under the UUID of event 2.
    raw.execute(&format!(
        "INSERT INTO credentials (id, jti, kind, system_id, grant_id, issuer, subject, audience, scopes, iat, exp) \
         VALUES (1, '{}', 'jwt', 'indexer', 'g', 'https://issuer-0.example', 'spiffe://example/w0', 'reports-api', \
         'reports:read', 1700000000, 1700000300)",
        ids[1]
    ))
    .await
    .unwrap();
    drop(raw);

    let opened = halflife::store::open(&halflife::store::OpenOptions {
        url: url.clone(),
        busy_timeout: std::time::Duration::from_secs(5),
        max_connections: 2,
        auto_migrate: true,
        application_name: "halflife-test".into(),
    })
    .await
    .unwrap();
    let events = opened.store.audit_events(&halflife::store::AuditFilter::default(), None, 10).await.unwrap();
    assert_eq!(events.iter().map(|e| e.hash.clone()).collect::<Vec<_>>(), hashes, "every hash kept");
    assert_eq!(events[0].prev_hash, GENESIS);
    assert_eq!(events[2].prev_hash, hashes[1], "prev_hash is the hash of the event before");
    let mut chain = ChainVerifier::new(1, GENESIS.to_owned(), &[]);
    for event in &events {
        chain.push(event);
    }
    let report = chain.finish();
    assert_eq!(report.events_checked, 3);
    let problem = report.first_problem.unwrap();
    assert_eq!((problem.seq, problem.what.contains("altered")), (4, true), "{problem:?}");
    assert_eq!(events[2].event.actor.as_deref(), Some("workload-3"));
    assert_eq!(events[3].event.actor.as_deref(), Some("mallory"));
    assert_eq!(events[1].event.subject.as_deref(), Some("spiffe://example/w0"));
    assert_eq!(events[1].event.attestation_issuer.as_deref(), Some("https://issuer-0.example"));
    assert_eq!(events[1].event.source.as_deref(), Some("10.0.0.7"));
    assert_eq!(events[1].event.audience.as_deref(), Some("reports-api"));
    assert_eq!(events[1].event.scopes.as_deref(), Some("reports:read"));
    let seqs = |filter: halflife::store::AuditFilter| {
        let store = &opened.store;
        async move { store.audit_events(&filter, None, 10).await.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>() }
    };
    let by_workload = halflife::store::AuditFilter {
        workload: Some("spiffe://example/w1".into()),
        ..halflife::store::AuditFilter::default()
    };
    assert_eq!(seqs(by_workload).await, [1, 3]);
    let by_issuer = halflife::store::AuditFilter {
        issuer: Some("https://issuer-0.example".into()),
        ..halflife::store::AuditFilter::default()
    };
    assert_eq!(seqs(by_issuer).await, [2, 4]);
    let by_owner =
        halflife::store::AuditFilter { owner: Some("tech".into()), ..halflife::store::AuditFilter::default() };
    assert_eq!(seqs(by_owner).await, [2, 3, 4]);
    let unknown = halflife::store::AuditFilter {
        workload: Some("spiffe://example/nobody".into()),
        ..halflife::store::AuditFilter::default()
    };
    assert_eq!(seqs(unknown).await, Vec::<i64>::new());
    // Every id reads back as it was written, and finds its events.
    let read = |e: &AuditRecord| (e.event.jti.clone(), e.event.request_id.clone(), e.event.attestation_id.clone());
    let expected = |seq: usize| {
        (Some(ids[seq - 1].to_owned()), Some(request_ids[seq - 1].to_owned()), Some(ids[4 - seq].to_owned()))
    };
    assert_eq!(events.iter().map(read).collect::<Vec<_>>(), (1..=4).map(expected).collect::<Vec<_>>());
    for (n, id) in ids.iter().enumerate() {
        let by_jti =
            halflife::store::AuditFilter { jti: Some((*id).into()), ..halflife::store::AuditFilter::default() };
        assert_eq!(seqs(by_jti).await, [n as i64 + 1], "{id}");
    }
    let by_lower_case =
        halflife::store::AuditFilter { jti: Some(ids[2].to_lowercase()), ..halflife::store::AuditFilter::default() };
    assert_eq!(seqs(by_lower_case).await, Vec::<i64>::new(), "ids are compared exactly, as before");
    // Stored as docs/audit.md says an operator finds them.
    let mut raw = db.raw().await;
    let columns = ids.iter().map(|id| ("jti", id)).chain(request_ids.iter().map(|id| ("request_id", id)));
    for (column, id) in columns {
        let found = raw.scalar(&format!("SELECT COUNT(*) FROM audit_events WHERE {}", raw.id_is(column, id))).await;
        assert_eq!(found, 1, "{id}");
        // And each reads back as its text by hand too (`halflife_id_text`).
        let text = format!("SELECT COUNT(*) FROM audit_events WHERE {} = '{id}'", id_text(!postgres(), column));
        assert_eq!(raw.scalar(&text).await, 1, "{id}");
    }
    assert_eq!(raw.scalar(&format!("SELECT COUNT(*) FROM credentials WHERE {}", raw.id_is("jti", ids[1]))).await, 1);
    // Only the UUIDs in canonical form take 16 bytes.
    let sixteen = |column: &str| {
        if postgres() {
            format!("octet_length({column}) = 16")
        } else {
            format!("typeof({column}) = 'blob' AND length({column}) = 16")
        }
    };
    for column in ["jti", "request_id", "attestation_id"] {
        let uuids = format!("SELECT COUNT(*) FROM audit_events WHERE {}", sixteen(column));
        assert_eq!(raw.scalar(&uuids).await, 2, "{column}");
    }
    assert_eq!(raw.scalar(&format!("SELECT COUNT(*) FROM credentials WHERE {}", sixteen("jti"))).await, 1);
    drop(raw);
    // Each string is stored once.
    let mut raw = db.raw().await;
    assert_eq!(raw.scalar("SELECT COUNT(*) FROM audit_names WHERE name = 'reports-api'").await, 1);
    drop(raw);
    // Each hash takes its 32 bytes.
    let mut raw = db.raw().await;
    let width = if postgres() { "octet_length(hash)" } else { "length(hash)" };
    assert_eq!(raw.scalar(&format!("SELECT CAST(MIN({width}) AS BIGINT) FROM audit_events")).await, 32);
    assert_eq!(raw.scalar(&format!("SELECT CAST(MAX({width}) AS BIGINT) FROM audit_events")).await, 32);
}

/// One name for an issuer: events carry the configured name (`issuer`, as
/// grants, `/v1/revoke` and `/v1/credentials` use it) beside its `iss`
/// (`issuer_url`), and the `issuer` filter takes either. Reasons are plain
/// words, never Rust's debug text (`Some("…")`).
#[tokio::test]
async fn events_name_issuers_as_grants_do_and_reasons_read_plainly() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.admin_token(Role::Auditor).await;
    let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let mut stranger = TestIssuer::rsa(RSA_ISS);
    stranger.kid = "kid-of-nobody".into();
    assert_eq!(app.exchange(&stranger.token(RSA_SUBJECT, app.now()), &[]).await.status(), 400);

    for filter in ["k8s", RSA_ISS] {
        let (status, page) =
            app.api(Method::GET, &format!("/v1/audit/events?kind=credential.*&issuer={filter}"), &auditor, None).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "filter {filter}: {page}");
        for e in events {
            assert_eq!((e["issuer"].as_str(), e["issuer_url"].as_str()), (Some("k8s"), Some(RSA_ISS)), "{e}");
        }
    }
    let (_, page) = app.api(Method::GET, "/v1/audit/events?kind=credential.denied", &auditor, None).await;
    let reason = page["events"][0]["reason"].as_str().unwrap();
    assert_eq!(reason, "invalid_grant: no key of issuer k8s matches kid \"kid-of-nobody\"");
    let jti = parts(body["access_token"].as_str().unwrap()).1["jti"].as_str().unwrap().to_owned();
    let (_, story) = app.api(Method::GET, &format!("/v1/credentials/{jti}"), &auditor, None).await;
    assert_eq!(
        (story["credential"]["issuer"].as_str(), story["credential"]["issuer_url"].as_str()),
        (Some("k8s"), Some(RSA_ISS))
    );
    assert_eq!(story["events"][0]["issuer"], "k8s");
}

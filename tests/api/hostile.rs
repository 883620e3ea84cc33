//! Hostile inputs beyond the everyday refusals: every case is refused with
//! the right error, issues nothing, leaves a denial record where a request
//! reached the exchange, never panics the server, and a forged token always
//! gets the one generic message.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::rejections::{assert_forged, assert_refused};
use halflife::domain::model::Role;

/// The RSA issuer's public key as SPKI, in DER and PEM (what an attacker
/// would use as an HMAC secret).
fn rsa_public_key_forms(issuer: &TestIssuer) -> (Vec<u8>, Vec<u8>) {
    let der = |format: &str| {
        let mut child = std::process::Command::new("openssl")
            .args(["pkey", "-inform", "DER", "-pubout", "-outform", format])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &issuer.pkcs8).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    (der("DER"), der("PEM"))
}

fn b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn hostile_attestation_headers_and_encodings_are_refused() {
    let options = Options { extra_config: NO_SOURCE_LIMIT.into(), max_body_bytes: 64 * 1024, ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };
    let now = app.now();
    let rsa = &app.rsa;
    let claims = rsa.claims(RSA_SUBJECT, now);
    let body = b64(&claims.to_string());

    // alg "none" in every spelling, with and without a signature.
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}).to_string());
        assert_forged(&app, &format!("{header}.{body}."), "malformed").await;
        assert_forged(&app, &format!("{header}.{body}.c2ln"), "malformed").await;
    }

    // HMAC keyed with the issuer's public key as PEM and DER.
    let (der, pem) = rsa_public_key_forms(rsa);
    assert!(pem.starts_with(b"-----BEGIN PUBLIC KEY-----") && der.len() > 200);
    for (alg, secret) in [("HS256", &der), ("HS256", &pem), ("HS384", &pem), ("HS512", &der)] {
        let header = b64(&json!({"alg": alg, "kid": rsa.kid}).to_string());
        let input = format!("{header}.{body}");
        let algorithm = match alg {
            "HS256" => ring::hmac::HMAC_SHA256,
            "HS384" => ring::hmac::HMAC_SHA384,
            _ => ring::hmac::HMAC_SHA512,
        };
        let mac = ring::hmac::sign(&ring::hmac::Key::new(algorithm, secret), input.as_bytes());
        assert_forged(&app, &format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())), "not allowed").await;
    }

    // Hostile kids, signed with the issuer's real key: only a kid of the
    // issuer's own key set is ever used.
    let long_kid = "k".repeat(8 * 1024);
    for kid in ["../../../../etc/passwd", "' OR '1'='1' --", "a\u{0}b", long_kid.as_str(), app.ec.kid.as_str(), "", " "]
    {
        let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
        assert_forged(&app, &rsa.sign_raw(&header, &claims), "no key of issuer k8s").await;
    }

    // Nested JWT, JWE, JSON serialization, extra segments, bad base64url.
    let good = rsa.token(RSA_SUBJECT, now);
    let nested = rsa.sign_raw(&json!({"alg": "RS256", "kid": rsa.kid, "cty": "JWT"}), &claims);
    assert_forged(&app, &nested, "header \"cty\"").await;
    let jwe_header = b64(&json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": rsa.kid}).to_string());
    assert_forged(&app, &format!("{jwe_header}.a2V5.aXY.Y2lwaGVy.dGFn"), "malformed").await;
    let (signing_input, signature) = good.rsplit_once('.').unwrap();
    let (header_part, payload_part) = signing_input.split_once('.').unwrap();
    let json_serialization =
        json!({"payload": payload_part, "signatures": [{"protected": header_part, "signature": signature}]});
    assert_forged(&app, &json_serialization.to_string(), "malformed").await;
    assert_forged(&app, &format!("{good}.{signature}"), "malformed").await;
    assert_forged(&app, &format!("{good}."), "malformed").await;
    assert_forged(&app, &format!(".{good}"), "malformed").await;
    for (i, bad) in ["+", "/", "=", " ", "%2B"].iter().enumerate() {
        let mangled = format!("{header_part}.{}{bad}{}.{signature}", &payload_part[..i + 5], &payload_part[i + 5..]);
        assert_forged(&app, &mangled, "malformed").await;
    }
    // Non-canonical base64url in the signature (trailing bits set) and a
    // truncated signature.
    let mut odd = signature.to_owned();
    let last = odd.pop().unwrap();
    odd.push(if last == 'A' { 'B' } else { 'A' });
    assert_forged(&app, &format!("{signing_input}.{odd}"), "").await;
    assert_forged(&app, &format!("{signing_input}.{}", &signature[..signature.len() - 12]), "").await;
    assert_forged(&app, &format!("{signing_input}."), "").await;

    // Duplicate JSON keys in the header and in the claims.
    let dup_header = format!(r#"{{"alg":"RS256","kid":"{}","alg":"none"}}"#, rsa.kid);
    let token = format!("{}.{body}.{signature}", URL_SAFE_NO_PAD.encode(dup_header));
    assert_forged(&app, &token, "malformed").await;
    let claims_text = claims.to_string();
    for (key, value) in [("iss", json!(EC_ISS)), ("sub", json!("system:serviceaccount:ai:other")), ("aud", json!("x"))]
    {
        let duplicated = format!("{},\"{key}\":{value}}}", &claims_text[..claims_text.len() - 1]);
        assert_forged(&app, &rsa.sign_text(&rsa.header(), &duplicated), "").await;
    }

    // Oversized, and deeply nested within the size limit.
    let mut big = rsa.claims(RSA_SUBJECT, now);
    big["pad"] = json!("x".repeat(20 * 1024));
    assert_forged(&app, &rsa.sign(&big), "larger than").await;
    let deep = format!("{},\"deep\":{}{}}}", &claims_text[..claims_text.len() - 1], "[".repeat(5000), "]".repeat(5000));
    assert_forged(&app, &rsa.sign_text(&rsa.header(), &deep), "nested too deeply").await;
    let mut deep_header = rsa.header();
    deep_header["x"] = serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap();
    assert_forged(&app, &rsa.sign_raw(&deep_header, &claims), "nested too deeply").await;

    // Numbers no time claim can hold.
    for exp in ["1e309", "-1e309", "1.0", "9223372036854775808", "-9223372036854775809", "null", "true", "[1]"] {
        let text = claims_text.replace(&format!("\"exp\":{}", claims["exp"]), &format!("\"exp\":{exp}"));
        assert_ne!(text, claims_text);
        assert_forged(&app, &rsa.sign_text(&rsa.header(), &text), "").await;
    }

    // Issuer spellings that are not the configured one.
    for iss in [RSA_ISS.to_uppercase(), format!("{RSA_ISS}/"), format!(" {RSA_ISS}"), format!("{RSA_ISS}\u{0}")] {
        let mut c = rsa.claims(RSA_SUBJECT, now);
        c["iss"] = json!(iss);
        assert_forged(&app, &rsa.sign(&c), "not trusted").await;
    }

    // An issuer configured for exactly one audience refuses a list of
    // two; a one-element list (as Kubernetes issues) is fine.
    let mut c = rsa.claims(RSA_SUBJECT, now);
    c["aud"] = json!([AUD, "another-service"]);
    assert_forged(&app, &rsa.sign(&c), "requires exactly one").await;
    c["aud"] = json!([AUD]);
    app.exchange_ok(&rsa.sign(&c), &[]).await;
    // The spire issuer allows several audiences as long as ours is there.
    let mut c = app.ec.claims(EC_SUBJECT, now);
    c["aud"] = json!([AUD, "another-service"]);
    app.exchange_ok(&app.ec.sign(&c), &[("audience", "search-api")]).await;

    // Wrong types for the other required claims.
    for (claim, value) in [("sub", json!(42)), ("sub", json!("")), ("iat", json!("now")), ("aud", json!(7))] {
        let mut c = rsa.claims(RSA_SUBJECT, now);
        c[claim] = value;
        assert_forged(&app, &rsa.sign(&c), "").await;
    }

    assert_eq!(app.credential_count().await, 2, "only the two valid tokens were exchanged");
    report_refused("hostile");
}

/// Points `jku` and `x5u` at a listener on 127.0.0.1: the broker refuses
/// the token and never connects.
#[tokio::test]
async fn key_pointing_headers_cause_no_outbound_connection() {
    let Some(app) = spawn_app().await else { return };
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let url = format!("http://{}/jwks.json", trap.local_addr().unwrap());
    let claims = app.rsa.claims(RSA_SUBJECT, app.now());
    for (name, value) in
        [("jku", json!(url)), ("x5u", json!(url)), ("jwk", json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "x5u": url}))]
    {
        let mut header = app.rsa.header();
        header[name] = value;
        assert_forged(&app, &app.rsa.sign_raw(&header, &claims), &format!("header \"{name}\"")).await;
    }
    // The refusal is answered before any fetch could happen, and a connect
    // lands in the backlog even without accept: an empty backlog now means
    // no connection was ever attempted.
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the broker connected to a URL a token named: {other:?}"),
    }
    report_refused("hostile");
}

#[tokio::test]
async fn hostile_request_parameters_are_refused() {
    let Some(app) = spawn_with(Options { max_body_bytes: 64 * 1024, ..Options::default() }).await else { return };
    let token = || app.rsa.token(RSA_SUBJECT, app.now());

    // Scopes: homoglyphs, wildcards, control characters, too many.
    for scope in ["reports:re\u{0430}d", "reports:*", "reports:read\u{0}", "reports:read\t", "REPORTS:READ"] {
        assert_refused(&app, &token(), &[("scope", scope)], "invalid_scope", "").await;
    }
    let many: Vec<String> = (0..10_000).map(|i| format!("s{i}")).collect();
    let body = assert_refused(&app, &token(), &[("scope", &many.join(" "))], "invalid_scope", "too many").await;
    assert!(body["error_description"].as_str().unwrap().len() < 200, "the description does not echo the input");

    // requested_ttl in forms a parser might take.
    for ttl in ["\"60\"", "6e1", "+60", "0x3c", "60 ", "１２", "-0", "901"] {
        assert_refused(&app, &token(), &[("requested_ttl", ttl)], "invalid_request", "requested_ttl").await;
    }

    // Another workload's audience.
    assert_refused(&app, &token(), &[("audience", "search-api")], "invalid_target", "search-api").await;
    // A `system` parameter is not a way to borrow another system's grant:
    // it is ignored and the token names the workload's own system.
    let issued = app.exchange_ok(&token(), &[("system", "someone-elses-system")]).await;
    let (_, claims) = parts(issued["access_token"].as_str().unwrap());
    assert_eq!(claims["system"], "summarizer");
    report_refused("hostile");
}

#[tokio::test]
async fn malformed_bodies_on_every_kind_of_route_are_refused_cleanly() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let mut tried = 0;
    let systems_before = app.api(reqwest::Method::GET, "/v1/systems", &admin, None).await.1;

    let system = json!({"id": "probe", "name": "Probe", "purpose": "p", "business_owner": "biz",
        "technical_owner": "tech", "tier": "sandbox"});
    let mut unknown_field = system.clone();
    unknown_field["is_admin"] = json!(true);
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: Vec<(Vec<u8>, &str)> = vec![
        (unknown_field.to_string().into_bytes(), "is_admin"),
        (system.to_string().as_bytes()[..40].to_vec(), ""),
        (b"{\"id\": \"\xff\xfe\"}".to_vec(), ""),
        (br#"{"id": NaN}"#.to_vec(), ""),
        (br#"{"id": 1e999}"#.to_vec(), ""),
        (nested.into_bytes(), ""),
        (b"".to_vec(), ""),
        (b"null".to_vec(), ""),
    ];
    for (body, needle) in bodies {
        let response = app
            .client
            .post(app.url("/v1/systems"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(status == 400 || status == 413, "{status} {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert!(error["error_description"].as_str().unwrap().contains(needle), "{text}");
        tried += 1;
    }

    // Wrong media types (415), methods (405) and oversized bodies (413).
    for (method, path, content_type, status) in [
        ("POST", "/oauth2/token", "application/json", 415),
        ("POST", "/oauth2/token", "text/plain", 415),
        ("POST", "/v1/systems", "application/x-www-form-urlencoded", 415),
        ("GET", "/oauth2/token", "", 405),
        ("PUT", "/oauth2/introspect", "", 405),
        ("DELETE", "/.well-known/jwks.json", "", 405),
    ] {
        let mut request =
            app.client.request(method.parse().unwrap(), app.url(path)).bearer_auth(&admin).body("{}".to_owned());
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path} {content_type}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string());
        tried += 1;
    }
    for path in ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(&admin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={}", "a".repeat(17 * 1024)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
        tried += 1;
    }

    // SQL in every audit filter: refused or matching nothing, and the
    // tables are intact afterwards.
    let events_before = app.events("credential.denied").await.len();
    for filter in ["system", "owner", "workload", "issuer", "kind", "outcome", "jti", "since", "until", "cursor"] {
        for injection in ["' OR '1'='1", "x'; DROP TABLE audit_events; --", "\" OR 1=1 --", "%' --", "1 UNION SELECT 1"]
        {
            let url = reqwest::Url::parse_with_params(&app.url("/v1/audit/events"), &[(filter, injection)]).unwrap();
            let response = app.client.get(url).bearer_auth(&admin).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            match status {
                200 => assert_eq!(body["events"], json!([]), "{filter}={injection} matched: {body}"),
                400 => assert!(body["error_description"].is_string()),
                other => panic!("{filter}={injection}: {other} {body}"),
            }
            tried += 1;
        }
    }
    assert_eq!(app.events("credential.denied").await.len(), events_before);
    assert_eq!(app.api(reqwest::Method::GET, "/v1/systems", &admin, None).await.1, systems_before);
    let verified = app.api(reqwest::Method::GET, "/v1/audit/verify", &admin, None).await;
    assert_eq!(verified.0, 200, "{:?}", verified.1);
    scoreboard("hostile", tried, 0);
}

/// serde fills a struct from a JSON array by position: `["Renamed"]` would
/// rename a system and `["auditor", "x"]` create an admin token. Every
/// write route of the operator API that takes a JSON body refuses anything
/// but an object, names the shape expected, and changes nothing.
#[tokio::test]
async fn every_json_body_on_v1_must_be_an_object() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let state = async || {
        let systems = app.api(reqwest::Method::GET, "/v1/systems", &admin, None).await.1;
        let owners = app.api(reqwest::Method::GET, "/v1/owners", &admin, None).await.1;
        let keys = app.api(reqwest::Method::GET, "/v1/keys", &admin, None).await.1;
        let counts = [
            app.scalar("SELECT COUNT(*) FROM audit_events").await,
            app.scalar("SELECT COUNT(*) FROM admin_tokens").await,
            app.scalar("SELECT COUNT(*) FROM grants").await,
        ];
        (systems, owners, keys, counts)
    };
    let before = state().await;
    let routes = write_routes(&app).await;
    assert!(routes.iter().filter(|r| r.json_body).count() >= 15);
    for route in routes.iter().filter(|r| r.json_body) {
        let positional: &[u8] = match route.template.as_str() {
            "/v1/systems/{id}" => br#"["Renamed"]"#,
            "/v1/admin-tokens" => br#"["auditor", "x"]"#,
            "/v1/systems/{id}/suspend" | "/v1/systems/{id}/retire" | "/v1/systems/{id}/revoke" => br#"["x"]"#,
            _ => br#"["summarizer", "x", "y"]"#,
        };
        for body in [positional, b"[]", br#""x""#, b"1", b"true", b"null"] {
            let (status, error) = send_json(&app, route.method.clone(), &route.path, &admin, body).await;
            let case = format!("{} {} {}", route.method, route.path, String::from_utf8_lossy(body));
            assert_eq!(status, 400, "{case}: {error}");
            assert_eq!(error["error"], "invalid_request", "{case}: {error}");
            let description = error["error_description"].as_str().unwrap();
            assert!(description.contains("must be an object"), "{case}: {description}");
            refused_one();
        }
    }
    assert_eq!(state().await, before, "a refused body changed something");
    report_refused("hostile");
}

/// Authenticate, then authorize, then parse: a caller whose role may not
/// use a route gets 403 and an `access.denied` record whatever its body,
/// path or query holds, and learns nothing of the route's input rules.
#[tokio::test]
async fn a_caller_without_the_role_gets_403_before_its_input_is_parsed() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.admin_token(Role::Auditor).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let bodies: [&[u8]; 5] = [br#"{"reason":"x"}"#, br#"{"reason": "#, br#"["x"]"#, br#"{"is_admin": true}"#, b"\xff"];
    let mut expected_denials = app.events("access.denied").await.len();
    let routes = write_routes(&app).await;
    for route in &routes {
        for body in bodies {
            let (status, error) = send_json(&app, route.method.clone(), &route.path, &auditor, body).await;
            let case = format!("{} {} {}", route.method, route.path, String::from_utf8_lossy(body));
            assert_eq!(status, 403, "{case}: {error}");
            assert_eq!(error["error_description"], "role auditor may not call this route", "{case}");
            expected_denials += 1;
            let denials = app.events("access.denied").await;
            assert_eq!(denials.len(), expected_denials, "{case}: not recorded");
            assert_eq!(denials.last().unwrap().reason.as_deref(), Some("role auditor may not call this route"));
            refused_one();
        }
    }
    // Query strings and forms too: an unknown audit filter, a repeated
    // form parameter.
    for query in ["bogus=1", "limit=0", "since=never"] {
        let url = app.url(&format!("/v1/audit/events?{query}"));
        let response = app.client.get(url).bearer_auth(&introspector).send().await.unwrap();
        assert_eq!(response.status(), 403, "{query}");
        refused_one();
    }
    let response = app
        .client
        .post(app.url("/oauth2/introspect"))
        .bearer_auth(&auditor)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=a&token=b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    refused_one();
    assert_eq!(app.events("access.denied").await.len(), expected_denials + 4);
    report_refused("hostile");
}

/// A workload's own access token is refused with 403 and recorded under
/// either scheme it may come with (Bearer, DPoP); a request with more than
/// one `Authorization` header is 400 on the operator API and the OAuth
/// endpoints alike, and does nothing.
#[tokio::test]
async fn workload_tokens_under_any_scheme_and_repeated_authorization_headers_are_refused() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.admin_token(Role::Admin).await;
    let introspector = app.admin_token(Role::Introspector).await;
    let workload = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let access_token = workload["access_token"].as_str().unwrap();
    let mut denials = app.events("access.denied").await.len();

    for scheme in ["DPoP", "dpop", "Bearer", "BEARER"] {
        for (method, path) in [("GET", "/v1/systems"), ("POST", "/v1/revoke"), ("POST", "/oauth2/introspect")] {
            let response = app
                .client
                .request(method.parse().unwrap(), app.url(path))
                .header("authorization", format!("{scheme} {access_token}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 403, "{scheme} {method} {path}");
            let body: Value = response.json().await.unwrap();
            assert!(body["error_description"].as_str().unwrap().contains("workload access tokens"), "{body}");
            denials += 1;
            let recorded = app.events("access.denied").await;
            assert_eq!(recorded.len(), denials, "{scheme} {path}: not recorded");
            assert_eq!(
                recorded.last().unwrap().reason.as_deref(),
                Some("a workload access token was presented on an admin route")
            );
            refused_one();
        }
    }
    // An admin token is a bearer token: under DPoP it authenticates nothing.
    let response =
        app.client.get(app.url("/v1/systems")).header("authorization", format!("DPoP {admin}")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    refused_one();

    // Two Authorization headers: 400 wherever they are sent, and nothing
    // happens.
    let credentials = app.credential_count().await;
    let events = app.scalar("SELECT COUNT(*) FROM audit_events").await;
    let twice = |method: &str, path: &str, first: &str, second: &str| {
        app.client
            .request(method.parse().unwrap(), app.url(path))
            .header("authorization", format!("Bearer {first}"))
            .header("authorization", format!("Bearer {second}"))
    };
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let exchange = [("grant_type", TOKEN_EXCHANGE), ("subject_token_type", JWT_TYPE), ("subject_token", &attestation)];
    let requests = [
        twice("GET", "/v1/systems", &admin, &admin),
        twice("GET", "/v1/systems", &admin, access_token),
        twice("POST", "/v1/systems/summarizer/suspend", &admin, &introspector).json(&json!({"reason": "x"})),
        twice("POST", "/oauth2/introspect", &introspector, &admin).form(&[("token", access_token)]),
        twice("POST", "/oauth2/token", &admin, &admin).form(&exchange),
        twice("POST", "/oauth2/revoke", access_token, access_token).form(&[("token", access_token)]),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        let url = response.url().path().to_owned();
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{url}");
        assert_eq!(body["error_description"], "send at most one Authorization header", "{url}");
        refused_one();
    }
    assert_eq!(app.credential_count().await, credentials);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM audit_events").await, events, "a refused request left a record");
    assert_eq!(app.introspect(&introspector, access_token).await["active"], true, "revoked by a refused request");
    report_refused("hostile");
}

/// A control character (NUL among them) in any audit filter or path id is
/// 400 `invalid_request` naming the parameter, on both backends, before
/// any query; a NUL in a body is 400 naming its field. None of it is an
/// outage: no 503, and `halflife_storage_unavailable_total` stays at 0.
#[tokio::test]
async fn control_characters_in_filters_and_ids_are_refused_naming_them() {
    let Some(app) = spawn_app().await else { return };
    let auditor = app.admin_token(Role::Auditor).await;
    let admin = app.admin_token(Role::Admin).await;
    let assert_names = |status: u16, body: &Value, field: &str, case: &str| {
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(body["error"], "invalid_request", "{case}: {body}");
        assert_eq!(body["field"], field, "{case}: {body}");
    };
    let filters = [
        "system", "owner", "workload", "issuer", "kind", "outcome", "jti", "since", "until", "cursor", "limit",
        "format",
    ];
    for filter in filters {
        for control in ["\u{0}", "\u{1}", "\n", "\u{7f}", "\u{85}"] {
            let value = format!("credential{control}issued");
            let url = reqwest::Url::parse_with_params(&app.url("/v1/audit/events"), &[(filter, &value)]).unwrap();
            let response = app.client.get(url).bearer_auth(&auditor).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_names(status, &body, filter, &format!("{filter}={value:?}"));
            refused_one();
        }
    }
    let reads = [
        ("/v1/systems/sum%00marizer", "id"),
        ("/v1/systems/%01/grants", "id"),
        ("/v1/systems/summarizer%0A/credentials", "id"),
        ("/v1/owners/biz%7F", "id"),
        ("/v1/credentials/%00", "jti"),
        ("/v1/credentials/x%C2%85", "jti"),
    ];
    for (path, field) in reads {
        let (status, body) = app.api(reqwest::Method::GET, path, &auditor, None).await;
        assert_names(status, &body, field, path);
        refused_one();
    }
    let writes = [
        (reqwest::Method::DELETE, "/v1/systems/summarizer/grants/summarizer-k8s%00", "grant", None),
        (reqwest::Method::DELETE, "/v1/systems/summarizer/grants?id=summarizer-k8s%00", "id", None),
        (reqwest::Method::POST, "/v1/keys/%00/retire", "kid", None),
        (reqwest::Method::POST, "/v1/owners/biz%00/recertify", "id", None),
        (reqwest::Method::POST, "/v1/systems/summarizer%00/suspend", "id", Some(json!({"reason": "x"}))),
        (reqwest::Method::POST, "/v1/systems/summarizer/suspend", "reason", Some(json!({"reason": "a\u{0}b"}))),
        (
            reqwest::Method::POST,
            "/v1/revoke",
            "issuer",
            Some(json!({"issuer": "k8s\u{0}", "subject": "x", "reason": "x"})),
        ),
    ];
    for (method, path, field, body) in writes {
        let (status, error) = app.api(method.clone(), path, &admin, body).await;
        assert_names(status, &error, field, &format!("{method} {path}"));
        refused_one();
    }
    // Nothing was changed, and nothing counted as an outage.
    let (_, system) = app.api(reqwest::Method::GET, "/v1/systems/summarizer", &auditor, None).await;
    assert_eq!(system["state"], "active");
    let grants = app.api(reqwest::Method::GET, "/v1/systems/summarizer/grants", &auditor, None).await.1;
    assert!(grants["grants"].as_array().unwrap().iter().any(|g| g["id"] == "summarizer-k8s"), "{grants}");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "halflife_storage_unavailable_total 0"), "{metrics}");
    report_refused("hostile");
}

/// The forged-token tests send more failures than the default per-source
/// allowance; the limit itself is tested in `throttle.rs`.
const NO_SOURCE_LIMIT: &str = "[rate_limits]\nfailures_per_source_per_minute = 0\n";

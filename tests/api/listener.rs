//! The listener: limits, timeouts, error shapes, TLS.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

#[tokio::test]
async fn bad_requests_get_the_oauth_error_shape() {
    let Some(app) = spawn_app().await else { return };
    let token_url = app.url("/oauth2/token");

    let big = "x".repeat(20_000);
    let response = app.client.post(&token_url).form(&[("subject_token", big.as_str())]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let response = app.client.post(&token_url).json(&serde_json::json!({"grant_type": "x"})).send().await.unwrap();
    assert_eq!(response.status(), 415);

    let response = app.client.get(&token_url).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let response = app
        .client
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=a&grant_type=b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_description"], "parameter grant_type is repeated");

    let response = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("x-request-id"));

    // A client's request id is kept when sane and replaced when not; either
    // way the id returned is the one in the audit event.
    for (sent, kept) in [("trace-abc-123", true), (&*"x".repeat(300), false)] {
        let response = app
            .client
            .post(&token_url)
            .header("x-request-id", sent)
            .form(&[("grant_type", TOKEN_EXCHANGE), ("subject_token_type", JWT_TYPE), ("subject_token", "junk")])
            .send()
            .await
            .unwrap();
        let returned = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(returned == sent, kept);
        let denials = app.events("credential.denied").await;
        assert_eq!(denials.last().unwrap().request_id.as_deref(), Some(returned.as_str()));
    }
}

#[tokio::test]
async fn metadata_and_jwks_describe_the_broker() {
    let Some(app) = spawn_app().await else { return };
    let meta: Value =
        app.client.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["issuer"], app.base);
    assert_eq!(meta["token_endpoint"], app.url("/oauth2/token"));
    assert_eq!(meta["introspection_endpoint"], app.url("/oauth2/introspect"));
    assert_eq!(meta["revocation_endpoint"], app.url("/oauth2/revoke"));
    assert_eq!(meta["jwks_uri"], app.url("/.well-known/jwks.json"));
    assert_eq!(meta["grant_types_supported"][0], TOKEN_EXCHANGE);
    assert_eq!(meta["access_token_signing_alg_values_supported"][0], "EdDSA");
    let jwks: Value = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "EdDSA");
    assert!(key["kid"].is_string());
    assert!(key.get("d").is_none(), "private key material must never be published");
}

#[tokio::test]
async fn slow_headers_are_cut_off_while_others_are_served() {
    let Some(app) = spawn_app().await else { return };
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Meanwhile a normal request is served.
    assert_eq!(app.client.get(app.url("/livez")).send().await.unwrap().status(), 200);
    // The server drops the slow connection after its 1 s header timeout.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "slow connection was not closed by the header-read timeout");
}

#[tokio::test]
async fn tls_is_served_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (app, cert) = tls_app(dir.path()).await;
    let addr = app.local_addr();
    assert!(app.base_url().starts_with("https://"));
    tokio::spawn(app.run(std::future::pending()));

    let tls = crate::mtls::pki::client_config(cert.cert.der().clone(), None);
    let client = reqwest::Client::builder().tls_backend_preconfigured(tls).build().unwrap();
    let url = format!("https://localhost:{}/.well-known/oauth-authorization-server", addr.port());
    let meta: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["issuer"], format!("https://{addr}"));

    // Plain HTTP to the TLS port gets nothing useful.
    let plain = reqwest::Client::new().get(format!("http://{addr}/livez")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// Opens a connection that sends part of a request and then nothing.
async fn slow_connection(addr: std::net::SocketAddr, body: bool) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let partial: &[u8] = if body {
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 4000\r\n\r\ngrant_type="
    } else {
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-"
    };
    // A connection over the limit may already be closed: that is fine.
    let _ = stream.write_all(partial).await;
    stream
}

/// Waits (bounded) for the server to close the connection; returns what it
/// sent before closing.
async fn closed_by_server(mut stream: tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_bounded_while_others_are_served() {
    let options =
        Options { server_extra: "request_timeout = \"1s\"\nmax_connections = 24\n".into(), ..Options::default() };
    let Some(app) = spawn_with(options).await else { return };

    // Twenty slow clients, some stuck in their headers, some in their body.
    let mut slow = Vec::new();
    for i in 0..20 {
        slow.push((i % 2 == 0, slow_connection(app.addr, i % 2 == 0).await));
    }
    // Legitimate exchanges are served meanwhile.
    for _ in 0..3 {
        app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    }
    // Every slow client is cut off by a timeout: a slow body gets 408.
    let mut tried = 0;
    for (body, stream) in slow {
        let sent = closed_by_server(stream).await.expect("a slow client was never cut off");
        if body {
            assert!(sent.starts_with("HTTP/1.1 408"), "slow body got: {sent:?}");
        }
        tried += 1;
    }

    // A flood beyond the connection limit: the excess is dropped at once,
    // the rest time out, and the server serves again afterwards.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(slow_connection(app.addr, true).await);
    }
    let mut answered_408 = 0;
    for stream in flood {
        let sent = closed_by_server(stream).await.expect("a flooding connection was never closed");
        answered_408 += usize::from(sent.starts_with("HTTP/1.1 408"));
        tried += 1;
    }
    assert!(answered_408 <= 24, "more than max_connections were held: {answered_408}");
    assert!(answered_408 > 0);
    app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    scoreboard("slow", tried, 0);
}

/// Opens a TCP connection to `addr` from the loopback address `from`
/// (Linux routes all of 127.0.0.0/8 to the loopback interface).
async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// How many of `streams` the server has closed so far (a read finds their
/// end without waiting).
fn closed(streams: &[tokio::net::TcpStream]) -> usize {
    streams
        .iter()
        .filter(|s| {
            let mut byte = [0u8; 1];
            !matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// One source opening more connections than the whole listener allows
/// cannot starve another: it holds `max_connections_per_source`, the rest
/// of its connections are closed at once, and a second source is served.
#[tokio::test]
async fn one_source_holding_more_than_its_share_cannot_starve_another() {
    let options = Options {
        server_extra: "max_connections = 24\nmax_connections_per_source = 8\n".into(),
        // Idle connections stay held for the whole test unless a limit
        // closes them.
        header_read_timeout: "60s",
        ..Options::default()
    };
    let Some(app) = spawn_with(options).await else { return };

    // 127.0.0.1 opens more idle connections than the listener allows.
    let mut flood = Vec::new();
    for _ in 0..30 {
        flood.push(connect_from([127, 0, 0, 1], app.addr).await);
    }
    // Accepted in order: once the last is closed, all were decided. Eight
    // stay open, the 22 over the source's share are closed at once.
    let mut byte = [0u8; 1];
    let last = tokio::time::timeout(Duration::from_secs(10), flood[29].read(&mut byte)).await;
    assert!(matches!(last, Ok(Ok(0)) | Ok(Err(_))), "the connection over every limit was not closed: {last:?}");
    assert!(
        eventually(Duration::from_secs(10), || async { closed(&flood) == 22 }).await,
        "{} of 30 connections from one source were closed; 22 should be",
        closed(&flood)
    );

    // Another source is served meanwhile.
    let other = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let attestation = app.rsa.token(RSA_SUBJECT, app.now());
    let form = [("grant_type", TOKEN_EXCHANGE), ("subject_token_type", JWT_TYPE), ("subject_token", &attestation)];
    let response =
        other.post(app.url("/oauth2/token")).form(&form).send().await.expect("the second source was starved");
    assert_eq!(response.status(), 200);

    // Sources each within their share fill the rest: the total limit
    // closes what is over it.
    let mut more = Vec::new();
    for source in 3..=6u8 {
        for _ in 0..8 {
            more.push(connect_from([127, 0, 0, source], app.addr).await);
        }
    }
    let last = tokio::time::timeout(Duration::from_secs(10), more[31].read(&mut byte)).await;
    assert!(matches!(last, Ok(Ok(0)) | Ok(Err(_))), "the connection over the total was not closed: {last:?}");

    let metrics = other.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |reason: &str| -> usize {
        let series = format!("halflife_connections_refused_total{{reason=\"{reason}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(count("per_source"), 22, "{metrics}");
    let total = count("total");
    assert!((1..=32).contains(&total), "{metrics}");
    drop((flood, more));
    scoreboard("flood", 22 + total, 0);
}

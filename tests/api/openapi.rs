//! `GET /openapi.json` describes exactly the routes the server has: every
//! route the routers register is documented, every documented operation
//! is served (the running server neither 404s nor 405s it), and the
//! document is OpenAPI 3.1. The operator API's router is built from its
//! part of the document, so its routes are documented by construction;
//! the other routers are read from their `.route(...)` lines.

use std::collections::BTreeSet;

use halflife::domain::model::Role;
use serde_json::Value;

use crate::helpers::*;

const METHODS: [&str; 5] = ["get", "post", "patch", "delete", "put"];

/// `(method, path)` of every `.route(...)` in the HTTP sources, and of
/// every operation of the operator API (routed from the document).
fn registered_routes() -> BTreeSet<(String, String)> {
    use utoipa::OpenApi as _;
    let operator = serde_json::to_value(halflife::http::admin::Api::openapi()).unwrap();
    let mut routes = BTreeSet::new();
    for (path, item) in operator["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    for entry in std::fs::read_dir(repo_root().join("src/http")).unwrap() {
        let path = entry.unwrap().path();
        // The console (src/http/console/) serves HTML pages to browsers,
        // not API operations; docs/console.md describes them.
        if path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix(".route(\"") else { continue };
            let (path, handlers) = rest.split_once('"').unwrap();
            for method in METHODS {
                let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric() && handlers.as_bytes()[i - 1] != b'_'
                });
                if called {
                    routes.insert((method.to_owned(), path.to_owned()));
                }
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_document_and_the_router_describe_the_same_routes() {
    let Some(app) = spawn_app().await else { return };
    let response = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "halflife");
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                assert!(operation["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}");
                documented.insert((method.to_owned(), path.clone()));
            }
        }
    }
    let registered = registered_routes();
    assert!(registered.len() > 30, "route scan found too little: {registered:?}");
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&registered).collect();
    assert!(undocumented.is_empty(), "routes missing from /openapi.json: {undocumented:?}");
    assert!(unserved.is_empty(), "documented but not routed: {unserved:?}");

    // And the running server answers every documented operation.
    let admin = app.admin_token(Role::Admin).await;
    for (method, path) in &documented {
        let concrete =
            path.replace("{id}", "none").replace("{grant}", "none").replace("{kid}", "none").replace("{jti}", "none");
        let response = app
            .client
            .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(!(status == 404 && body.contains("no such endpoint")), "{method} {path} is not served");
    }
}

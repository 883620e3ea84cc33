//! Issued tokens verify with an independent implementation (Python PyJWT)
//! against the published JWKS.

use std::process::Command;

use crate::helpers::*;

const SCRIPT: &str = r#"
import json, sys
import jwt
jwks, token, issuer, audience = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
kid = jwt.get_unverified_header(token)["kid"]
key = jwt.PyJWKSet.from_dict(jwks)[kid]
claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=audience, issuer=issuer,
                    options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})
print(json.dumps(claims))
"#;

/// Whether PyJWT can run here; in CI (`HALFLIFE_REQUIRE_PYJWT=1`) its absence fails the test.
pub fn pyjwt_available() -> bool {
    let ok =
        Command::new("python3").args(["-c", "import jwt, cryptography"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("HALFLIFE_REQUIRE_PYJWT").is_err(),
            "PyJWT is required here: pip install 'pyjwt[crypto]'"
        );
        eprintln!("SKIPPED: python3 with PyJWT and cryptography is not installed (pip install 'pyjwt[crypto]')");
    }
    ok
}

pub async fn check_with_pyjwt(app: &TestApp, audience: &str, token: &str) -> serde_json::Value {
    let jwks = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap();
    let out = Command::new("python3").args(["-c", SCRIPT, &jwks, token, &app.base, audience]).output().unwrap();
    assert!(out.status.success(), "PyJWT rejected the token: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn pyjwt_verifies_eddsa_tokens() {
    if !pyjwt_available() {
        return;
    }
    let Some(app) = spawn_app().await else { return };
    let body = app.exchange_ok(&app.rsa.token(RSA_SUBJECT, app.now()), &[]).await;
    let claims = check_with_pyjwt(&app, "reports-api", body["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], RSA_SUBJECT);
    assert_eq!(claims["system"], "summarizer");
}

#[tokio::test]
async fn pyjwt_verifies_es256_tokens() {
    if !pyjwt_available() {
        return;
    }
    let Some(app) = spawn_with(Options { algorithm: "ES256", ..Options::default() }).await else { return };
    let body = app.exchange_ok(&app.ec.token(EC_SUBJECT, app.now()), &[("audience", "docs-api")]).await;
    let (header, _) = parts(body["access_token"].as_str().unwrap());
    assert_eq!(header["alg"], "ES256");
    let claims = check_with_pyjwt(&app, "docs-api", body["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], EC_SUBJECT);
}

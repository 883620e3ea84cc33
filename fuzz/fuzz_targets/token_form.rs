//! The token endpoint's body parsing: `Form::parse` on arbitrary bytes and,
//! when that succeeds, `exchange_request`. Neither may panic; every refusal
//! is a client error (4xx) that renders; an accepted request is coherent.

#![no_main]

use axum::response::IntoResponse;
use halflife::broker::exchange::Proof;
use halflife::domain::values::CredentialKind;
use halflife::http::error::ApiError;
use halflife::http::extract::Form;
use halflife::http::oauth::{REQUESTED_TOKEN_TYPES, TOKEN_TYPE_POSTGRES_LOGIN, TOKEN_TYPE_SECRET, exchange_request};
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;

fuzz_target!(|data: &[u8]| {
    let form = match Form::parse(data) {
        Ok(form) => form,
        Err(error) => return refused(error),
    };
    let (proof, ask, issued_token_type) = match exchange_request(form) {
        Ok(parsed) => parsed,
        Err(error) => return refused(error),
    };
    assert!(REQUESTED_TOKEN_TYPES.contains(&issued_token_type), "{issued_token_type}");
    if let Proof::SubjectToken(token) = &proof {
        assert!(!token.expose_secret().is_empty(), "an empty subject_token was accepted");
    }
    if let Some(ttl) = ask.requested_ttl {
        assert!(!ttl.is_zero(), "a zero requested_ttl was accepted");
    }
    match (issued_token_type, ask.kind) {
        (TOKEN_TYPE_POSTGRES_LOGIN, Some(CredentialKind::Postgres(_))) => {}
        (TOKEN_TYPE_POSTGRES_LOGIN, kind) => panic!("postgres-login with kind {kind:?}"),
        (TOKEN_TYPE_SECRET, Some(CredentialKind::Secret)) => {}
        (TOKEN_TYPE_SECRET, kind) => panic!("secret with kind {kind:?}"),
        (_, Some(CredentialKind::Jwt)) => {}
        (other, kind) => panic!("{other} with kind {kind:?}"),
    }
});

fn refused(error: ApiError) {
    let response = error.into_response();
    assert!(response.status().is_client_error(), "a malformed request answered {}", response.status());
}

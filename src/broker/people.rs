//! People sign in with the organisation's OpenID Connect provider: the
//! person's ID token, verified like any attestation, is exchanged at
//! `POST /oauth2/token` (RFC 8693, `requested_token_type`
//! [`SESSION_TOKEN_TYPE`]) for a short-lived, revocable session token that
//! every operator route accepts. Roles come from the person's groups at
//! sign-in (`[[people.roles]]`); a person in no mapped group gets no session.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use super::admin::{AdminCaller, Person};
use super::{Broker, Failure, Internal, Unavailable};
use crate::attest::jwks::{KeySet, RemoteJwks};
use crate::attest::jwt::{IssuerKeys, TrustedIssuer, Verifier};
use crate::clock::SharedClock;
use crate::config::PeopleConfig;
use crate::crypto;
use crate::domain::model::Role;
use crate::store::{AuditEvent, Outcome, RequestMeta, SessionRecord};

/// Prefix of session tokens, so secret scanners can recognise a leaked one.
pub const SESSION_TOKEN_PREFIX: &str = "hls_";
/// `requested_token_type` (and `issued_token_type`) of a session.
pub const SESSION_TOKEN_TYPE: &str = "urn:halflife:token-type:session";
/// `subject_token_type` of an OpenID Connect ID token (RFC 8693 §3).
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Largest discovery document read.
const MAX_DISCOVERY_BYTES: usize = 256 * 1024;

/// The people issuer: how its ID tokens are verified and what they grant.
pub struct People {
    config: PeopleConfig,
    issuer: String,
    client: reqwest::Client,
    clock: SharedClock,
    /// The console's client, when the console signs people in.
    console: Option<ConsoleClient>,
    /// Built on first use from the provider's discovery document (or at
    /// once from `jwks_file`), so the broker starts while the provider is
    /// unreachable and sign-in works as soon as it answers.
    verifiers: OnceCell<Verifiers>,
    /// The provider's endpoints, read from its discovery document once.
    endpoints: OnceCell<Endpoints>,
}

/// One verifier per client: an ID token is accepted only by the client it
/// was issued to (its `aud`).
struct Verifiers {
    cli: Verifier,
    console: Option<Verifier>,
}

/// Which client a person signed in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInClient {
    /// `people.client_id`: `halflife login`, or any client that exchanges
    /// the ID token at the token endpoint.
    Cli,
    /// The web console's client (`console.client_id`).
    Console,
}

/// The web console as a client of the provider (authorization code with
/// PKCE, RFC 9700 §2.1.1).
pub struct ConsoleClient {
    pub client_id: String,
    /// `client_secret_basic` when set; a public client otherwise.
    pub client_secret: Option<SecretString>,
    /// `{public URL}/console/callback`, registered at the provider.
    pub redirect_uri: String,
}

/// What the provider's discovery document says (OpenID Connect Discovery
/// 1.0 §3).
#[derive(Debug, Clone)]
struct Endpoints {
    jwks_uri: url::Url,
    authorization_endpoint: Option<url::Url>,
    token_endpoint: Option<url::Url>,
    /// Whether the provider sends `iss` with its authorization responses
    /// (RFC 9207).
    iss_parameter: bool,
}

/// A console sign-in under way: what the browser carries between the
/// redirect to the provider and the return (in a short-lived cookie).
pub struct Authorization {
    /// Where to send the person.
    pub url: url::Url,
    pub state: String,
    pub nonce: String,
    pub code_verifier: SecretString,
}

/// Why a sign-in was refused. The person sees the message; none of it
/// comes from the token's signature or secret parts.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The ID token does not verify (answered `invalid_grant`).
    #[error("the ID token is not valid: {0}")]
    Invalid(String),
    /// It verifies, but this person may not sign in (`access_denied`).
    #[error("{0}")]
    Denied(String),
    /// The provider's discovery document or keys could not be read.
    #[error("the identity provider cannot be reached: {0}")]
    Provider(String),
    #[error(transparent)]
    Failure(#[from] Failure),
    /// Too many failed attempts from this address (the token endpoint's
    /// per-source limit).
    #[error(transparent)]
    Throttled(#[from] super::throttle::Throttled),
}

impl From<Unavailable> for SignInError {
    fn from(e: Unavailable) -> Self {
        Self::Failure(e.into())
    }
}

impl From<Internal> for SignInError {
    fn from(e: Internal) -> Self {
        Self::Failure(e.into())
    }
}

/// A session just created: the token (shown once) and its record.
pub struct NewSession {
    pub token: SecretString,
    pub record: SessionRecord,
}

impl People {
    pub fn new(
        config: &PeopleConfig,
        console: Option<ConsoleClient>,
        client: reqwest::Client,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let people = Self {
            issuer: config.issuer_id(),
            config: config.clone(),
            client,
            clock,
            console,
            verifiers: OnceCell::new(),
            endpoints: OnceCell::new(),
        };
        if let Some(path) = &config.jwks_file {
            let keys = Arc::new(KeySet::from_file(path).map_err(|e| anyhow::anyhow!("people.jwks_file: {e}"))?);
            let verifiers = people.verifiers_with(|| IssuerKeys::Static(Arc::clone(&keys)));
            people.verifiers.set(verifiers).map_err(|_| anyhow::anyhow!("people verifier set twice"))?;
        }
        Ok(people)
    }

    /// What a client needs to sign a person in (`GET /v1/sign-in`).
    pub fn sign_in_info(&self) -> Value {
        json!({"issuer": self.issuer, "client_id": self.config.client_id, "scopes": self.config.scopes})
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether the console signs people in through the provider.
    pub fn console_sign_in(&self) -> bool {
        self.console.is_some()
    }

    fn verifiers_with(&self, keys: impl Fn() -> IssuerKeys) -> Verifiers {
        let verifier = |audience: &str| {
            Verifier::new(vec![TrustedIssuer {
                name: "people".to_owned(),
                iss: self.issuer.clone(),
                algorithms: self.config.algorithms.iter().map(|a| a.to_jwt()).collect(),
                audience: audience.to_owned(),
                leeway: self.config.leeway.get(),
                // An ID token proves a sign-in that just happened.
                max_token_age: Duration::from_secs(24 * 3600),
                single_use: false,
                single_audience: false,
                keys: keys(),
            }])
        };
        Verifiers {
            cli: verifier(&self.config.client_id),
            console: self.console.as_ref().map(|c| verifier(&c.client_id)),
        }
    }

    async fn verifier(&self, client: SignInClient) -> Result<&Verifier, SignInError> {
        let verifiers = self
            .verifiers
            .get_or_try_init(|| async {
                let jwks_uri = self.endpoints().await?.jwks_uri.clone();
                let remote = Arc::new(RemoteJwks::new(
                    jwks_uri,
                    self.client.clone(),
                    Duration::from_secs(30),
                    self.config.jwks_refresh_interval.get().max(Duration::from_secs(3600)) * 24,
                    Arc::clone(&self.clock),
                ));
                Ok::<_, SignInError>(self.verifiers_with(|| IssuerKeys::Remote(Arc::clone(&remote))))
            })
            .await?;
        match client {
            SignInClient::Cli => Ok(&verifiers.cli),
            SignInClient::Console => verifiers
                .console
                .as_ref()
                .ok_or_else(|| SignInError::Denied("the console does not sign people in here".into())),
        }
    }

    async fn endpoints(&self) -> Result<&Endpoints, SignInError> {
        self.endpoints.get_or_try_init(|| self.discover()).await
    }

    /// The provider's endpoints, from its discovery document (OpenID
    /// Connect Discovery 1.0 §4), whose `issuer` must be the configured one.
    async fn discover(&self) -> Result<Endpoints, SignInError> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let provider = |e: String| SignInError::Provider(format!("{url}: {e}"));
        let response =
            self.client.get(&url).timeout(Duration::from_secs(10)).send().await.map_err(|e| provider(e.to_string()))?;
        if !response.status().is_success() {
            return Err(provider(format!("answered {}", response.status())));
        }
        let bytes = read_bounded(response).await.map_err(provider)?;
        let document: Value = serde_json::from_slice(&bytes).map_err(|e| provider(e.to_string()))?;
        if document.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(provider(format!("its issuer is not {:?}", self.issuer)));
        }
        let endpoint = |name: &str| -> Result<Option<url::Url>, SignInError> {
            let Some(raw) = document.get(name).and_then(Value::as_str) else { return Ok(None) };
            let url = url::Url::parse(raw).map_err(|e| provider(format!("{name}: {e}")))?;
            let loopback = crate::config::is_loopback_host(&url);
            if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
                return Err(provider(format!("{name} {url} is not https")));
            }
            Ok(Some(url))
        };
        Ok(Endpoints {
            jwks_uri: endpoint("jwks_uri")?.ok_or_else(|| provider("it names no jwks_uri".into()))?,
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
            iss_parameter: document.get("authorization_response_iss_parameter_supported").and_then(Value::as_bool)
                == Some(true),
        })
    }

    /// Starts a console sign-in: the provider's authorization URL for an
    /// authorization code with PKCE (S256), a fresh `state` and `nonce`.
    pub async fn authorize(&self) -> Result<Authorization, SignInError> {
        let console = self.console()?;
        let endpoints = self.endpoints().await?;
        let endpoint = endpoints
            .authorization_endpoint
            .clone()
            .ok_or_else(|| SignInError::Provider("its discovery document names no authorization_endpoint".into()))?;
        let random = || crypto::random_bytes::<32>().map(crypto::b64url).map_err(|e| Internal::new("sign-in state", e));
        let state = random()?;
        let nonce = random()?;
        let code_verifier = SecretString::from(random()?);
        let challenge = crypto::b64url(crypto::sha256(code_verifier.expose_secret().as_bytes()));
        let mut url = endpoint;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &console.client_id)
            .append_pair("redirect_uri", &console.redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(Authorization { url, state, nonce, code_verifier })
    }

    fn console(&self) -> Result<&ConsoleClient, SignInError> {
        self.console.as_ref().ok_or_else(|| SignInError::Denied("the console does not sign people in here".into()))
    }

    /// Completes a console sign-in: checks the provider's `iss` (RFC 9207)
    /// when it sends one (and requires it when it says it does), redeems
    /// the code with the PKCE verifier, and returns the ID token, whose
    /// `nonce` must be the one this sign-in sent.
    pub async fn redeem(
        &self,
        code: &str,
        iss: Option<&str>,
        code_verifier: &SecretString,
        nonce: &str,
    ) -> Result<SecretString, SignInError> {
        let console = self.console()?;
        let endpoints = self.endpoints().await?;
        match iss {
            Some(iss) if iss != self.issuer => {
                return Err(SignInError::Invalid(format!("the answer came from {iss:?}, not {:?}", self.issuer)));
            }
            None if endpoints.iss_parameter => {
                return Err(SignInError::Invalid("the provider's answer does not name its issuer (iss)".into()));
            }
            _ => {}
        }
        let endpoint = endpoints
            .token_endpoint
            .clone()
            .ok_or_else(|| SignInError::Provider("its discovery document names no token_endpoint".into()))?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", console.redirect_uri.as_str()),
            ("code_verifier", code_verifier.expose_secret()),
        ];
        let mut request = self.client.post(endpoint.clone()).timeout(Duration::from_secs(10));
        match &console.client_secret {
            Some(secret) => {
                // RFC 6749 §2.3.1: each part form-urlencoded, then Basic.
                let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let credentials = zeroize::Zeroizing::new(format!(
                    "{}:{}",
                    encode(&console.client_id),
                    encode(secret.expose_secret())
                ));
                let basic = zeroize::Zeroizing::new(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    credentials.as_bytes(),
                ));
                request = request.header(reqwest::header::AUTHORIZATION, format!("Basic {}", basic.as_str()));
            }
            None => form.push(("client_id", console.client_id.as_str())),
        }
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let provider = |e: String| SignInError::Provider(format!("{endpoint}: {e}"));
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| provider(e.to_string()))?;
        let status = response.status();
        let bytes = read_bounded(response).await.map_err(provider)?;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("no error code");
            // The provider's own words, never anything we sent.
            let description = answer.get("error_description").and_then(Value::as_str).unwrap_or_default();
            return Err(SignInError::Invalid(format!(
                "the provider refused the sign-in code ({status}, {}{}{})",
                crate::domain::identity::visible(error),
                if description.is_empty() { "" } else { ": " },
                crate::domain::identity::visible(description)
            )));
        }
        let id_token = answer
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| provider("the answer carries no id_token".into()))?;
        let verifier = self.verifier(SignInClient::Console).await?;
        let (_, claims) = verifier
            .verify_id_token(id_token, self.clock.now())
            .await
            .map_err(|e| SignInError::Invalid(e.to_string()))?;
        let sent = claims.get("nonce").and_then(Value::as_str).unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), nonce.as_bytes())) {
            return Err(SignInError::Invalid("the ID token's nonce is not this sign-in's".into()));
        }
        Ok(SecretString::from(id_token))
    }

    /// Verifies an ID token and decides who the person is and which roles
    /// they hold now.
    pub async fn verify(
        &self,
        client: SignInClient,
        id_token: &str,
        now: OffsetDateTime,
    ) -> Result<(Person, Vec<Role>, Vec<String>), SignInError> {
        let verifier = self.verifier(client).await?;
        let (attestation, claims) =
            verifier.verify_id_token(id_token, now).await.map_err(|e| SignInError::Invalid(e.to_string()))?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let email = text("email").filter(|_| claims.get("email_verified").and_then(Value::as_bool) != Some(false));
        let person = Person {
            issuer: attestation.iss,
            subject: attestation.subject,
            email,
            name: text("name"),
            owns: Vec::new(),
        };
        if !self.config.allowed_email_domains.is_empty() {
            let domain = person.email.as_deref().and_then(|e| e.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase());
            let allowed = domain.as_deref().is_some_and(|d| {
                self.config.allowed_email_domains.iter().any(|allowed| allowed.eq_ignore_ascii_case(d))
            });
            if !allowed {
                return Err(SignInError::Denied(format!(
                    "sign-in needs a verified email address in {}",
                    self.config.allowed_email_domains.join(", ")
                )));
            }
        }
        let groups = groups(&claims, &self.config.groups_claim);
        let roles: BTreeSet<Role> = self
            .config
            .roles
            .iter()
            .filter(|m| groups.contains(&m.group))
            .filter_map(|m| Role::parse(&m.role))
            .collect();
        if roles.is_empty() {
            return Err(SignInError::Denied(format!(
                "{} is in no group that people.roles maps to a role",
                crate::domain::identity::visible(person.email.as_deref().unwrap_or(&person.subject))
            )));
        }
        Ok((person, roles.into_iter().collect(), groups.into_iter().collect()))
    }

    pub fn session_ttl(&self) -> Duration {
        self.config.session_ttl.get()
    }
}

/// A provider's answer, at most [`MAX_DISCOVERY_BYTES`] of it.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let too_large = || format!("the answer is over {MAX_DISCOVERY_BYTES} bytes");
    if response.content_length().is_some_and(|n| n > MAX_DISCOVERY_BYTES as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if bytes.len() + chunk.len() > MAX_DISCOVERY_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The person's groups: the claim as a list of strings, or one string.
fn groups(claims: &Map<String, Value>, claim: &str) -> BTreeSet<String> {
    match claims.get(claim) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(one)) => BTreeSet::from([one.clone()]),
        _ => BTreeSet::new(),
    }
}

impl Broker {
    /// Signs a person in: verifies their ID token and creates a session
    /// (`session.created`, naming the person and their roles). Refusals
    /// are recorded as `session.refused`.
    pub async fn sign_in(&self, id_token: &str, meta: &RequestMeta) -> Result<NewSession, SignInError> {
        self.sign_in_through(SignInClient::Cli, id_token, meta).await
    }

    /// Signs a person in with an ID token issued to `client`.
    pub async fn sign_in_through(
        &self,
        client: SignInClient,
        id_token: &str,
        meta: &RequestMeta,
    ) -> Result<NewSession, SignInError> {
        let people = self.people.as_ref().ok_or_else(|| {
            SignInError::Denied("people do not sign in to this broker: it has no [people] configuration".into())
        })?;
        let now = self.clock.now();
        // The token endpoint's per-source limit on failures holds here too.
        let source = meta.source.as_deref().and_then(|s| s.parse::<std::net::IpAddr>().ok());
        self.throttle.source(source)?;
        let (person, roles, groups) = match people.verify(client, id_token, now).await {
            Ok(verified) => verified,
            Err(e @ (SignInError::Invalid(_) | SignInError::Denied(_))) => {
                self.throttle.failed(source);
                let mut event = AuditEvent::new("session.refused", Outcome::Denied, now, meta);
                event.reason = Some(e.to_string());
                event.attestation_issuer = Some(people.issuer().to_owned());
                self.log.record_event(event).await.map_err(Unavailable)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let random = crypto::random_bytes::<32>().map_err(|e| Internal::new("session token generation", e))?;
        let token = SecretString::from(format!("{SESSION_TOKEN_PREFIX}{}", crypto::b64url(random)));
        let hash = crypto::sha256(token.expose_secret().as_bytes());
        let ttl = time::Duration::try_from(people.session_ttl()).unwrap_or(time::Duration::hours(8));
        let record = SessionRecord {
            id: super::exchange::new_jti(now),
            issuer: person.issuer.clone(),
            subject: person.subject.clone(),
            email: person.email.clone(),
            name: person.name.clone(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            groups,
            created_at: now,
            expires_at: now + ttl,
            revoked_at: None,
        };
        // The owners this person is: those whose email is their verified one.
        let owners = match &person.email {
            Some(email) => self
                .lifecycle
                .list_owners()
                .await
                .map_err(Unavailable)?
                .into_iter()
                .filter(|o| crate::domain::identity::same_email(email, &o.email))
                .map(|o| o.id.to_string())
                .collect(),
            None => Vec::new(),
        };
        let caller = caller_of(&record, roles, owners.clone());
        let mut event = AuditEvent::new("session.created", Outcome::Success, now, meta);
        event.actor = Some(caller.actor());
        event.attestation_issuer = Some(person.issuer.clone());
        event.subject = Some(person.subject.clone());
        event.exp = Some(record.expires_at.unix_timestamp());
        event.detail = Some(json!({
            "session": record.id, "issuer": person.issuer, "subject": person.subject,
            "email": person.email, "roles": record.roles, "owners": owners,
        }));
        self.sessions.create_session(record.clone(), hash, event, owners).await.map_err(Unavailable)?;
        Ok(NewSession { token, record })
    }

    /// The person behind a session token, if it is valid and unexpired.
    pub(super) async fn authenticate_session(&self, token: &str) -> Result<Option<AdminCaller>, Unavailable> {
        let hash = crypto::sha256(token.as_bytes());
        let Some(record) = self.sessions.session_by_hash(hash).await.map_err(Unavailable)? else {
            return Ok(None);
        };
        if record.expires_at <= self.clock.now() {
            return Ok(None);
        }
        let roles = record.roles.iter().filter_map(|r| Role::parse(r)).collect();
        let owns = self.sessions.owners_of_person(&record.issuer, &record.subject).await.map_err(Unavailable)?;
        Ok(Some(caller_of(&record, roles, owns)))
    }

    /// Active sessions: everyone's for an admin, the caller's own otherwise.
    pub async fn sessions(&self, caller: &AdminCaller) -> Result<Vec<SessionRecord>, Unavailable> {
        let now = self.clock.now();
        let own = caller.person.as_ref().map(|p| (p.issuer.as_str(), p.subject.as_str()));
        let filter = if caller.may(|r| r == Role::Admin) { None } else { own };
        if filter.is_none() && !caller.may(|r| r == Role::Admin) {
            // An automation token that is not an admin has no sessions.
            return Ok(Vec::new());
        }
        self.sessions.sessions(now, filter).await.map_err(Unavailable)
    }

    /// Revokes a session: one's own, or anyone's for an admin. `Ok(None)`
    /// when there is no such session the caller may see.
    pub async fn revoke_session(
        &self,
        id: &str,
        caller: &AdminCaller,
        meta: &RequestMeta,
    ) -> Result<Option<bool>, Unavailable> {
        let Some(session) = self.sessions.session(id).await.map_err(Unavailable)? else {
            return Ok(None);
        };
        let own = caller.person.as_ref().is_some_and(|p| p.issuer == session.issuer && p.subject == session.subject);
        if !own && !caller.may(|r| r == Role::Admin) {
            return Ok(None);
        }
        let mut event = AuditEvent::new("session.revoked", Outcome::Success, self.clock.now(), meta);
        event.actor = Some(caller.actor());
        event.attestation_issuer = Some(session.issuer.clone());
        event.subject = Some(session.subject.clone());
        event.detail = Some(json!({"session": session.id, "email": session.email}));
        self.sessions.revoke_session(id, event).await.map_err(Unavailable).map(Some)
    }
}

fn caller_of(record: &SessionRecord, roles: Vec<Role>, owns: Vec<String>) -> AdminCaller {
    AdminCaller {
        id: record.id.clone(),
        name: record.email.clone().unwrap_or_else(|| record.subject.clone()),
        roles,
        person: Some(Person {
            issuer: record.issuer.clone(),
            subject: record.subject.clone(),
            email: record.email.clone(),
            name: record.name.clone(),
            owns,
        }),
        expires_at: Some(record.expires_at),
    }
}

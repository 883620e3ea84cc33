//! Delegation (RFC 8693 §2.1, §4.1, §4.4): an agent acts on behalf of a
//! person, or of the agent that passed it a token, and every token, every
//! introspection and every audit record says who acted for whom. Revoking
//! the person revokes what agents hold in their name, in every system.

use halflife::clock::Clock;
use halflife::domain::model::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const IDP_ISS: &str = "https://idp.test.example";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The support agent: acts for support staff of the company's IdP.
const AGENT: &str = "system:serviceaccount:support:agent";
/// A workload whose grant allows no delegation.
const PLAIN: &str = "system:serviceaccount:support:plain";
/// A sub-agent: acts on halflife tokens passed on to it.
const SUBAGENT: &str = "spiffe://prod.example/ns/tools/sa/search";

fn catalog() -> String {
    format!(
        r#"{CATALOG_OWNERS}
{}
{}

[[grants]]
id = "support-agent"
system = "support"
issuer = "k8s"
subject = "{AGENT}"
audiences = ["tickets-api"]
scopes = ["tickets:read", "tickets:write"]
default_scopes = ["tickets:read"]
kinds = ["jwt", "secret"]
max_ttl = "15m"
on_behalf_of = [{{ issuer = "corp-idp", subjects = ["*"], claims = {{ groups = "support" }} }}]

[[grants]]
id = "support-plain"
system = "support"
issuer = "k8s"
subject = "{PLAIN}"
audiences = ["tickets-api"]
max_ttl = "15m"

[[grants]]
id = "search-subagent"
system = "search"
issuer = "spire"
subject = "{SUBAGENT}"
audiences = ["tickets-api"]
scopes = ["tickets:read"]
max_ttl = "10m"
on_behalf_of = [{{ issuer = "halflife", subjects = ["*"] }}]
"#,
        pilot_system("support", "Support assistant", "Answers customer tickets", "30d"),
        pilot_system("search", "Ticket search", "Searches tickets for other agents", "30d"),
    )
}

/// The app, with the company IdP (`corp-idp`) trusted as an issuer of
/// people's tokens, and that IdP.
struct World {
    app: TestApp,
    idp: TestIssuer,
    _idp_dir: tempfile::TempDir,
    admin: String,
}

async fn world(extra: &str) -> Option<World> {
    let idp = TestIssuer::rsa(IDP_ISS);
    let idp_dir = tempfile::tempdir().unwrap();
    let jwks = idp_dir.path().join("idp.jwks");
    std::fs::write(&jwks, idp.jwks().to_string()).unwrap();
    let extra_config = format!(
        r#"
[[issuers]]
name = "corp-idp"
issuer = "{IDP_ISS}"
jwks_file = "{}"
algorithms = ["RS256"]
audience = "{AUD}"
{extra}
"#,
        jwks.display()
    );
    let options = Options { catalog: catalog(), promote: vec![], extra_config, ..Options::default() };
    let app = spawn_with(options).await?;
    let admin = app.admin_token(Role::Admin).await;
    Some(World { app, idp, _idp_dir: idp_dir, admin })
}

impl World {
    /// A person's ID token from the IdP, valid for `ttl` seconds.
    fn person(&self, sub: &str, groups: &[&str], ttl: i64) -> String {
        let now = self.app.now();
        let mut claims = self.idp.claims(sub, now);
        claims["exp"] = json!(now + ttl);
        claims["groups"] = json!(groups);
        claims["email"] = json!(format!("{sub}@example.com"));
        self.idp.sign(&claims)
    }

    fn agent(&self, subject: &str) -> String {
        self.app.rsa.token(subject, self.app.now())
    }

    fn subagent(&self) -> String {
        self.app.ec.token(SUBAGENT, self.app.now())
    }

    async fn delegate(&self, subject: &str, subject_type: &str, actor: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", subject_type),
            ("actor_token", actor),
            ("actor_token_type", JWT_TYPE),
        ];
        form.extend_from_slice(extra);
        let response = self.app.client.post(self.app.url("/oauth2/token")).form(&form).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn delegate_ok(&self, subject: &str, subject_type: &str, actor: &str, audience: &str) -> Value {
        let (status, body) = self.delegate(subject, subject_type, actor, &[("audience", audience)]).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn active(&self, token: &Value) -> bool {
        let introspected = self.app.introspect(&self.admin, token["access_token"].as_str().unwrap()).await;
        introspected["active"] == true
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.app.api(Method::GET, &format!("/v1/audit/events?{query}"), &self.admin, None).await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().unwrap().clone()
    }
}

fn claims_of(token: &Value) -> Value {
    parts(token["access_token"].as_str().unwrap()).1
}

#[tokio::test]
async fn an_agent_acts_for_a_person_and_every_token_says_so() {
    let Some(w) = world("").await else { return };
    let person = w.person("ana", &["support", "staff"], 120);
    let issued = w.delegate_ok(&person, ID_TOKEN_TYPE, &w.agent(AGENT), "tickets-api").await;

    // RFC 8693 §4.1: the subject is the person, the actor the agent; the
    // agent's system answers for the token.
    let claims = claims_of(&issued);
    assert_eq!(claims["sub"], "ana");
    assert_eq!(claims["act"], json!({"sub": AGENT, "iss": RSA_ISS}));
    assert_eq!(claims["client_id"], AGENT);
    assert_eq!(claims["system"], "support");
    assert_eq!(claims["scope"], "tickets:read");
    assert_eq!(claims["aud"], "tickets-api");
    // Never longer than the person's token (the default would be 300 s).
    assert!(issued["expires_in"].as_i64().unwrap() <= 120, "{issued}");
    assert!(claims["exp"].as_i64().unwrap() <= w.app.now() + 120);

    // Verified with the published keys, and introspected, `act` is there.
    let verified = verify_with_jwks(&w.app, issued["access_token"].as_str().unwrap()).await;
    assert_eq!(verified["act"]["sub"], AGENT);
    let introspected = w.app.introspect(&w.admin, issued["access_token"].as_str().unwrap()).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(introspected["sub"], "ana");
    assert_eq!(introspected["act"], json!({"sub": AGENT, "iss": RSA_ISS}));

    // The issuance names both, and the auditor finds it from either side.
    let by_subject = w.audit("subject=ana&kind=credential.issued").await;
    assert_eq!(by_subject.len(), 1, "{by_subject:?}");
    let delegation = &by_subject[0]["detail"]["delegation"];
    assert_eq!(delegation["subject"]["issuer"], "corp-idp");
    assert_eq!(delegation["subject"]["sub"], "ana");
    assert_eq!(delegation["actor"]["issuer"], "k8s");
    assert_eq!(delegation["actor"]["sub"], AGENT);
    assert_eq!(delegation["depth"], 1);
    assert_eq!(delegation["chain"], json!([{"sub": AGENT, "iss": RSA_ISS}]));
    assert_eq!(by_subject[0]["jti"], claims["jti"]);
    assert_eq!(w.audit("actor=system:serviceaccount:support:agent&kind=credential.issued").await.len(), 1);
    assert_eq!(w.audit("workload=ana&kind=credential.issued").await.len(), 1);
    assert_eq!(w.audit("workload=system:serviceaccount:support:agent&kind=credential.issued").await.len(), 1);
    assert!(w.audit("subject=bob").await.is_empty());

    // The credential's story says on whose behalf it acts.
    let jti = claims["jti"].as_str().unwrap();
    let (status, story) = w.app.api(Method::GET, &format!("/v1/credentials/{jti}"), &w.admin, None).await;
    assert_eq!(status, 200, "{story}");
    assert_eq!(story["credential"]["on_behalf_of"], json!({"issuer": "corp-idp", "subject": "ana"}));
    assert_eq!(story["credential"]["subject"], AGENT);

    // A workload acting for itself still gets a token without `act`.
    let own = w.app.exchange_ok(&w.agent(AGENT), &[("audience", "tickets-api")]).await;
    assert!(claims_of(&own).get("act").is_none());
    assert_eq!(claims_of(&own)["sub"], AGENT);
}

#[tokio::test]
async fn pyjwt_reads_who_acted_for_whom() {
    if !crate::independent::pyjwt_available() {
        return;
    }
    let Some(w) = world("").await else { return };
    let issued =
        w.delegate_ok(&w.person("ana", &["support"], 600), ID_TOKEN_TYPE, &w.agent(AGENT), "tickets-api").await;
    let claims =
        crate::independent::check_with_pyjwt(&w.app, "tickets-api", issued["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "ana");
    assert_eq!(claims["act"]["sub"], AGENT);
    assert_eq!(claims["act"]["iss"], RSA_ISS);
}

#[tokio::test]
async fn an_agent_acts_only_for_whom_its_grant_and_the_person_allow() {
    let Some(w) = world("").await else { return };
    let agent = || w.agent(AGENT);
    let mut tried = 0;
    let mut refused = |status: u16, body: &Value, code: &str, mention: &str| {
        tried += 1;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], code, "{body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(mention), "{description:?} should mention {mention:?}");
    };

    // Not support staff: the grant's claim requirement is not met.
    let (s, b) = w.delegate(&w.person("bob", &["sales"], 600), ID_TOKEN_TYPE, &agent(), &[]).await;
    refused(s, &b, "access_denied", "does not allow");
    // A grant without on_behalf_of allows no delegation.
    let (s, b) = w.delegate(&w.person("ana", &["support"], 600), ID_TOKEN_TYPE, &w.agent(PLAIN), &[]).await;
    refused(s, &b, "access_denied", "allows no delegation");
    // The person's token names another actor (RFC 8693 §4.4 may_act).
    let now = w.app.now();
    let mut claims = w.idp.claims("ana", now);
    claims["groups"] = json!(["support"]);
    claims["may_act"] = json!({"sub": "system:serviceaccount:support:other"});
    let (s, b) = w.delegate(&w.idp.sign(&claims), ID_TOKEN_TYPE, &agent(), &[]).await;
    refused(s, &b, "access_denied", "may_act");
    // ... while one naming this agent is obeyed.
    claims["may_act"] = json!({"sub": AGENT, "iss": RSA_ISS});
    claims["jti"] = json!(uuid_like());
    let (s, b) = w.delegate(&w.idp.sign(&claims), ID_TOKEN_TYPE, &agent(), &[]).await;
    assert_eq!(s, 200, "{b}");
    // A forged person's token; an untrusted actor.
    let forged = TestIssuer::rsa(IDP_ISS).sign(&w.idp.claims("ana", now));
    let (s, b) = w.delegate(&forged, ID_TOKEN_TYPE, &agent(), &[]).await;
    refused(s, &b, "invalid_grant", "subject_token is invalid");
    let (s, b) = w
        .delegate(&w.person("ana", &["support"], 600), ID_TOKEN_TYPE, &TestIssuer::rsa(RSA_ISS).token(AGENT, now), &[])
        .await;
    refused(s, &b, "invalid_grant", "actor_token is invalid");
    // A delegated credential is a JWT: it must be able to say `act`.
    let (s, b) = w
        .delegate(
            &w.person("ana", &["support"], 600),
            ID_TOKEN_TYPE,
            &agent(),
            &[("requested_token_type", "urn:halflife:token-type:secret")],
        )
        .await;
    refused(s, &b, "invalid_request", "JWT");
    // An agent does not act for itself through delegation.
    let (s, b) = w.delegate(&agent(), JWT_TYPE, &agent(), &[]).await;
    refused(s, &b, "invalid_request", "same workload");

    // Malformed pairs.
    let person = w.person("ana", &["support"], 600);
    let form = |pairs: &[(&'static str, &str)]| {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", TOKEN_EXCHANGE.to_owned()),
            ("subject_token", person.clone()),
            ("subject_token_type", ID_TOKEN_TYPE.to_owned()),
        ];
        form.extend(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())));
        form
    };
    let actor = agent();
    for (pairs, mention) in [
        (vec![("actor_token", actor.as_str())], "actor_token_type"),
        (vec![("actor_token_type", JWT_TYPE)], "without actor_token"),
        (vec![("actor_token", actor.as_str()), ("actor_token_type", ACCESS_TOKEN_TYPE)], "actor_token_type"),
        (vec![("actor_token", ""), ("actor_token_type", JWT_TYPE)], "actor_token"),
    ] {
        let response = w.app.client.post(w.app.url("/oauth2/token")).form(&form(&pairs)).send().await.unwrap();
        let status = response.status().as_u16();
        refused(status, &response.json().await.unwrap(), "invalid_request", mention);
    }
    // An access token is a subject only on someone's behalf.
    let response = w
        .app
        .client
        .post(w.app.url("/oauth2/token"))
        .form(&[("grant_type", TOKEN_EXCHANGE), ("subject_token", &person), ("subject_token_type", ACCESS_TOKEN_TYPE)])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    refused(status, &response.json().await.unwrap(), "invalid_request", "actor_token");

    // Every refusal is on the record, the agent's ones with who it tried to
    // act for.
    let denied = w.audit("kind=credential.denied&limit=100").await;
    assert_eq!(denied.len(), tried, "{denied:#?}");
    let bob = denied.iter().find(|e| e["detail"]["delegation"]["subject"]["sub"] == "bob").unwrap();
    assert_eq!(bob["subject"], AGENT);
    assert!(bob["reason"].as_str().unwrap().starts_with("access_denied"), "{bob}");
    let forged = denied.iter().find(|e| e["reason"].as_str().unwrap().contains("subject_token: ")).unwrap();
    assert!(forged["reason"].as_str().unwrap().contains("issuer corp-idp"), "{forged}");
}

#[tokio::test]
async fn a_token_passed_to_a_sub_agent_nests_its_actors_up_to_the_limit() {
    let Some(w) = world("[tokens]\nmax_delegation_depth = 2\n").await else { return };
    let first = w.delegate_ok(&w.person("ana", &["support"], 600), ID_TOKEN_TYPE, &w.agent(AGENT), "tickets-api").await;

    // The agent passes its token to the search sub-agent, which exchanges
    // it with its own attestation.
    let token = first["access_token"].as_str().unwrap();
    let second = w.delegate_ok(token, ACCESS_TOKEN_TYPE, &w.subagent(), "tickets-api").await;
    let claims = claims_of(&second);
    assert_eq!(claims["sub"], "ana");
    assert_eq!(claims["act"], json!({"sub": SUBAGENT, "iss": EC_ISS, "act": {"sub": AGENT, "iss": RSA_ISS}}));
    assert_eq!(claims["system"], "search");
    assert!(claims["exp"].as_i64().unwrap() <= claims_of(&first)["exp"].as_i64().unwrap());
    let events = w.audit("actor=spiffe://prod.example/ns/tools/sa/search&kind=credential.issued").await;
    let delegation = &events[0]["detail"]["delegation"];
    assert_eq!(delegation["depth"], 2);
    assert_eq!(delegation["subject"]["issuer"], "halflife");
    assert_eq!(delegation["on_behalf_of"], json!({"issuer": "corp-idp", "subject": "ana"}));
    assert_eq!(delegation["chain"].as_array().unwrap().len(), 2);
    // The person is still whom both answer to.
    assert_eq!(w.audit("subject=ana&kind=credential.issued").await.len(), 2);

    // A third actor would exceed tokens.max_delegation_depth.
    let (status, body) =
        w.delegate(second["access_token"].as_str().unwrap(), ACCESS_TOKEN_TYPE, &w.subagent(), &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("max_delegation_depth"), "{body}");

    // A halflife token that is no longer active cannot be passed on.
    let (status, _) = w.api_revoke(json!({"jti": claims_of(&first)["jti"], "reason": "leaked"})).await;
    assert_eq!(status, 200);
    let (status, body) = w.delegate(token, ACCESS_TOKEN_TYPE, &w.subagent(), &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    // Nor is one halflife token a subject as a plain JWT.
    let (status, body) = w.delegate(token, JWT_TYPE, &w.subagent(), &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
}

#[tokio::test]
async fn delegated_tokens_never_outlive_the_subject_token() {
    let Some(w) = world("").await else { return };
    let issued = w
        .delegate(&w.person("ana", &["support"], 45), ID_TOKEN_TYPE, &w.agent(AGENT), &[("requested_ttl", "600")])
        .await;
    assert_eq!(issued.0, 200, "{}", issued.1);
    assert!(issued.1["expires_in"].as_i64().unwrap() <= 45, "{}", issued.1);
    // The person's token expires; the agent cannot act on it any more.
    let person = w.person("ana", &["support"], 30);
    w.app.clock.advance(std::time::Duration::from_secs(40));
    let (status, body) = w.delegate(&person, ID_TOKEN_TYPE, &w.agent(AGENT), &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
}

impl World {
    async fn api_revoke(&self, body: Value) -> (u16, Value) {
        self.app.api(Method::POST, "/v1/revoke", &self.admin, Some(body)).await
    }
}

#[tokio::test]
async fn revoking_a_person_revokes_what_agents_hold_in_their_name() {
    let Some(mut w) = world("").await else { return };
    let for_ana =
        w.delegate_ok(&w.person("ana", &["support"], 600), ID_TOKEN_TYPE, &w.agent(AGENT), "tickets-api").await;
    let passed_on =
        w.delegate_ok(for_ana["access_token"].as_str().unwrap(), ACCESS_TOKEN_TYPE, &w.subagent(), "tickets-api").await;
    let for_bob =
        w.delegate_ok(&w.person("bob", &["support"], 600), ID_TOKEN_TYPE, &w.agent(AGENT), "tickets-api").await;
    let own = w.app.exchange_ok(&w.agent(AGENT), &[("audience", "tickets-api")]).await;

    // "Ana left: what were agents doing in her name?" Revoke her.
    let (status, body) =
        w.api_revoke(json!({"issuer": "corp-idp", "subject": "ana", "reason": "left the company"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 2, "{body}");
    assert!(!w.active(&for_ana).await);
    assert!(!w.active(&passed_on).await, "the sub-agent's token acts for ana too, in another system");
    assert!(w.active(&for_bob).await);
    assert!(w.active(&own).await);
    // After a restart, read from the database afresh, nothing changed.
    let app = w.app;
    w.app = app.restart().await;
    assert!(!w.active(&for_ana).await);
    assert!(!w.active(&passed_on).await);
    assert!(w.active(&for_bob).await);
    let jti = claims_of(&passed_on)["jti"].as_str().unwrap().to_owned();
    let (_, story) = w.app.api(Method::GET, &format!("/v1/credentials/{jti}"), &w.admin, None).await;
    assert_eq!(story["credential"]["revoked_by"], "principal", "{story}");
    assert!(story["related"].as_array().unwrap().iter().any(|e| e["reason"] == "left the company"), "{story}");

    // Ana is revoked, not banned: a new delegation on a fresh token works.
    let again = w.delegate_ok(&w.person("ana", &["support"], 600), ID_TOKEN_TYPE, &w.agent(AGENT), "tickets-api").await;
    assert!(w.active(&again).await);

    // The agent's system is revoked: everything it holds goes, whoever it
    // acted for.
    let (status, body) =
        w.app.api(Method::POST, "/v1/systems/support/revoke", &w.admin, Some(json!({"reason": "incident"}))).await;
    assert_eq!(status, 200, "{body}");
    assert!(!w.active(&for_bob).await && !w.active(&again).await && !w.active(&own).await);

    // The row marking that follows the epochs reaches delegated rows too.
    w.app.broker.run_jobs_once(w.app.clock.now()).await.unwrap();
    let unmarked = w
        .app
        .scalar(
            "SELECT COUNT(*) FROM credentials c JOIN workloads p ON p.id = c.principal_id \
             WHERE p.subject = 'ana' AND c.revoked_at IS NULL AND c.system_id = 'search'",
        )
        .await;
    assert_eq!(unmarked, 0);
}

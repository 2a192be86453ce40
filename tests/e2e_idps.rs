//! Tokens shaped exactly like the access tokens of the identity providers
//! operators run (Keycloak, Auth0, Microsoft Entra ID v1 and v2, Google, Okta),
//! signed by test keys, through real Envoy with the README's recipes: nested
//! and URL-named claims, roles, `scp`/`scope` as string or array, and each
//! provider's issuer, audience and client-id quirks.
//!
//! The shapes follow each provider's documentation of its token format (links
//! in the README's "Identity provider recipes").

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use support::stack::Stack;

const ENTRA_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One identity provider: its signing key (with a `kid` in its own style) and
/// its provider configuration, as the README's recipe writes it.
struct Idp {
    name: &'static str,
    key: RS256KeyPair,
    kid: &'static str,
    provider: Value,
}

fn jwks(key: &RS256KeyPair, kid: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let c = key.public_key().to_components();
    json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e)}]})
    .to_string()
}

impl Idp {
    fn new(name: &'static str, kid: &'static str, mut provider: Value) -> Idp {
        let key = RS256KeyPair::generate(2048).unwrap();
        provider["local_jwks"] = json!({"inline_string": jwks(&key, kid)});
        Idp {
            name,
            key,
            kid,
            provider,
        }
    }

    /// A token with these claims, and the header these providers all send:
    /// `{"alg":"RS256","typ":"JWT","kid":…}`.
    fn token(&self, claims: Value) -> String {
        let claims: JWTClaims<serde_json::Map<String, Value>> =
            serde_json::from_value(claims).unwrap();
        self.key.clone().with_key_id(self.kid).sign(claims).unwrap()
    }
}

fn idps() -> Vec<Idp> {
    vec![
        Idp::new(
            "keycloak",
            "lN3ErM2Wy_9GK0ivSFoDPeJ0fmcd1Mh1a7OPS_Wd2ZA",
            json!({
                "issuer": "https://kc.example.test/realms/acme",
                "audiences": ["tollgate-api"],
                "role_claims": ["realm_access.roles", "resource_access.tollgate-api.roles"],
                "claim_to_headers": [{"claim_name": "realm_access.roles", "header_name": "x-realm-roles"}],
                "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}]
            }),
        ),
        Idp::new(
            "auth0",
            "QzBCMDQ2NTRFNzQ1N0VFRTc2NEU2NzcwNjg0MUJDQkIyNDA4RDZERQ",
            json!({
                "issuer": "https://acme.eu.auth0.com/",
                "audiences": ["https://api.acme.test"],
                "role_claims": ["permissions", "\"https://acme.test/roles\""],
                "claim_to_headers": [{"claim_name": "\"https://acme.test/tenant\"", "header_name": "x-tenant"}]
            }),
        ),
        Idp::new(
            "entra-v2",
            "nOo3ZDrODXEK1jKWhXslHR_KXEg",
            json!({
                "issuer": format!("https://login.microsoftonline.com/{ENTRA_TENANT}/v2.0"),
                "audiences": ["6e74172b-be56-4843-9ff4-e66a39bb12e3"],
                "client_id_claims": ["azp", "appid"],
                "claim_to_headers": [{"claim_name": "tid", "header_name": "x-tenant"}]
            }),
        ),
        Idp::new(
            "entra-v1",
            "kWbkaa6qs8wsTnBwiiNYOhHbnAw",
            json!({
                "issuer": format!("https://sts.windows.net/{ENTRA_TENANT}/"),
                "audiences": ["api://tollgate-api"],
                "client_id_claims": ["appid", "azp"]
            }),
        ),
        Idp::new(
            "google",
            "a50f6e70ef4b548a5fd9142eecd1fb8f54dce9ee",
            json!({
                "issuer": "https://accounts.google.com",
                "audiences": ["1234-abc.apps.googleusercontent.com"]
            }),
        ),
        Idp::new(
            "okta",
            "Ym9MOqFcqrLkh7FIz1yeVXGmmD8gmE6xPAk8XBI8GPc",
            json!({
                "issuer": "https://acme.okta.com/oauth2/default",
                "audiences": ["api://default"],
                "client_id_claims": ["cid"]
            }),
        ),
    ]
}

fn start(idps: &[Idp]) -> Stack {
    let providers: Vec<(String, Value)> = idps
        .iter()
        .map(|i| (i.name.to_string(), i.provider.clone()))
        .collect();
    // Google also issues tokens with the scheme-less issuer: a second provider
    // with the same keys (README: "Google").
    let google_legacy = idps
        .iter()
        .find(|i| i.name == "google")
        .map(|g| {
            let mut p = g.provider.clone();
            p["issuer"] = json!("accounts.google.com");
            p
        })
        .unwrap();
    Stack::builder()
        .plugin_config(move |c| {
            for (name, provider) in providers {
                c["providers"][name] = provider;
            }
            c["providers"]["google-legacy"] = google_legacy;
            let rules = c["rules"].as_array_mut().unwrap();
            for (i, rule) in [
                json!({"match": {"prefix": "/idp/admin"},
                       "requires": {"roles": {"any_of": ["admin", "Data.Admin", "delete:data"]}}}),
                json!({"match": {"prefix": "/idp/data"},
                       "requires": {"scopes": {"any_of": ["read:data", "Data.Read"]}}}),
                json!({"match": {"prefix": "/idp/tenant"},
                       "requires": {"claims": [{"name": "\"https://acme.test/tenant\"", "equals": "acme"}]}}),
                json!({"match": {"prefix": "/idp/writers"},
                       "requires": {"providers": ["keycloak"],
                                    "claims": [{"name": "resource_access.tollgate-api.roles", "contains": "writer"}]}}),
                json!({"match": {"prefix": "/idp/"}, "requires": {}}),
            ]
            .into_iter()
            .enumerate()
            {
                rules.insert(i, rule);
            }
        })
        .start()
}

struct Reply {
    status: u16,
    body: Value,
}

fn get(stack: &Stack, path: &str, token: &str) -> Reply {
    let mut resp = support::http_agent()
        .get(stack.envoy.url(path))
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn upstream(r: &Reply, header: &str) -> Option<String> {
    r.body["headers"][header].as_str().map(str::to_string)
}

#[test]
fn tokens_shaped_like_each_identity_providers_are_understood() {
    let idps = idps();
    let stack = start(&idps);
    let idp = |name: &str| idps.iter().find(|i| i.name == name).unwrap();
    let (iat, exp) = (now() - 10, now() + 600);

    // Keycloak: typ "JWT", azp is the client, roles nested per realm and client.
    let kc = idp("keycloak");
    let kc_claims = |realm: Value, client: Value| {
        json!({"exp": exp, "iat": iat, "jti": "b7a2c1e0-kc", "iss": "https://kc.example.test/realms/acme",
            "aud": ["tollgate-api", "account"], "sub": "f9c54b21-3b1e-4a52-9d1e-27d8c0a1e9a1", "typ": "Bearer",
            "azp": "mobile-app", "sid": "5c3e", "acr": "1", "scope": "openid profile read:data",
            "realm_access": {"roles": realm}, "resource_access": {"tollgate-api": {"roles": client}, "account": {"roles": ["view-profile"]}},
            "preferred_username": "alice", "email_verified": true})
    };
    let admin = kc.token(kc_claims(
        json!(["offline_access", "admin"]),
        json!(["reader"]),
    ));
    let r = get(&stack, "/idp/admin/x", &admin);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        upstream(&r, "x-tollgate-client-id").as_deref(),
        Some("mobile-app"),
        "azp"
    );
    assert_eq!(
        upstream(&r, "x-realm-roles").as_deref(),
        Some("offline_access,admin")
    );
    let user = kc.token(kc_claims(json!(["offline_access"]), json!(["writer"])));
    let r = get(&stack, "/idp/admin/x", &user);
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"], "access_denied");
    assert_eq!(
        r.body["error_description"],
        "the caller lacks a role this resource requires (one of: admin, Data.Admin, delete:data)"
    );
    assert!(
        !r.body.to_string().contains("offline_access"),
        "a 403 never echoes the token"
    );
    // Client roles are roles too, and nested claims work in rules.
    assert_eq!(get(&stack, "/idp/writers/x", &user).status, 200);
    assert_eq!(get(&stack, "/idp/writers/x", &admin).status, 403);

    // Auth0: trailing-slash issuer, audience array with the userinfo URL,
    // permissions, and namespaced (URL-named) custom claims.
    let a0 = idp("auth0");
    let a0_claims = |permissions: Value, tenant: &str| {
        json!({"iss": "https://acme.eu.auth0.com/", "sub": "auth0|64f1c2", "aud": ["https://api.acme.test", "https://acme.eu.auth0.com/userinfo"],
            "iat": iat, "exp": exp, "azp": "kN3qL0Vx", "scope": "openid read:data", "permissions": permissions,
            "https://acme.test/tenant": tenant, "https://acme.test/roles": ["support"]})
    };
    let reader = a0.token(a0_claims(json!(["read:data"]), "acme"));
    let r = get(&stack, "/idp/tenant/x", &reader);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upstream(&r, "x-tenant").as_deref(), Some("acme"));
    assert_eq!(
        upstream(&r, "x-tollgate-client-id").as_deref(),
        Some("kN3qL0Vx")
    );
    assert_eq!(get(&stack, "/idp/admin/x", &reader).status, 403);
    let deleter = a0.token(a0_claims(json!(["read:data", "delete:data"]), "other"));
    assert_eq!(
        get(&stack, "/idp/admin/x", &deleter).status,
        200,
        "permissions as roles"
    );
    assert_eq!(
        get(&stack, "/idp/tenant/x", &deleter).status,
        403,
        "URL-named claim checked"
    );

    // Entra ID v2: GUID audience, scp as a space-delimited string, app roles, tid.
    let v2 = idp("entra-v2");
    let v2_claims = |scp: Option<&str>, roles: Value| {
        let mut c = json!({"aud": "6e74172b-be56-4843-9ff4-e66a39bb12e3",
            "iss": format!("https://login.microsoftonline.com/{ENTRA_TENANT}/v2.0"),
            "iat": iat, "nbf": iat, "exp": exp, "aio": "AXQAi/8U", "azp": "b7c3d0e1-5f2a-4e9b-8c1d-0a2b3c4d5e6f", "azpacr": "0",
            "name": "Alice", "oid": "690222be-ff1a-4d56-abd1-7e4f7d38e474", "preferred_username": "alice@acme.test",
            "rh": "0.AXQA", "roles": roles, "sub": "HKZpfaHyWadeOouYlitjrI-KffTm222X5rrV3xDqfKQ", "tid": ENTRA_TENANT,
            "uti": "fqiBqXLPj0eQa82S-IYFAA", "ver": "2.0"});
        if let Some(scp) = scp {
            c["scp"] = json!(scp);
        }
        c
    };
    let read = v2.token(v2_claims(Some("Data.Read User.Read"), json!([])));
    let r = get(&stack, "/idp/data/x", &read);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        upstream(&r, "x-tollgate-scopes").as_deref(),
        Some("Data.Read User.Read")
    );
    assert_eq!(upstream(&r, "x-tenant").as_deref(), Some(ENTRA_TENANT));
    assert_eq!(
        upstream(&r, "x-tollgate-client-id").as_deref(),
        Some("b7c3d0e1-5f2a-4e9b-8c1d-0a2b3c4d5e6f")
    );
    let app = v2.token(v2_claims(None, json!(["Data.Admin"])));
    assert_eq!(get(&stack, "/idp/admin/x", &app).status, 200, "app roles");
    assert_eq!(
        get(&stack, "/idp/data/x", &app).status,
        403,
        "an app token has no scp"
    );
    // A v1 token is not a v2 token: its issuer is another provider's.
    let v1 = idp("entra-v1");
    let v1_token = v1.token(json!({"aud": "api://tollgate-api", "iss": format!("https://sts.windows.net/{ENTRA_TENANT}/"),
        "iat": iat, "nbf": iat, "exp": exp, "appid": "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5", "appidacr": "1",
        "idp": format!("https://sts.windows.net/{ENTRA_TENANT}/"), "oid": "b1c2", "scp": "Data.Read", "sub": "b1c2",
        "tid": ENTRA_TENANT, "ver": "1.0"}));
    let r = get(&stack, "/idp/data/x", &v1_token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        upstream(&r, "x-tollgate-provider").as_deref(),
        Some("entra-v1")
    );
    assert_eq!(
        upstream(&r, "x-tollgate-client-id").as_deref(),
        Some("0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5"),
        "appid"
    );
    let wrong_aud = v2.token({
        let mut c = v2_claims(Some("Data.Read"), json!([]));
        c["aud"] = json!("api://tollgate-api");
        c
    });
    assert_eq!(get(&stack, "/idp/data/x", &wrong_aud).status, 401);

    // Google: both issuer spellings, client id as audience.
    let g = idp("google");
    for iss in ["https://accounts.google.com", "accounts.google.com"] {
        let t = g.token(json!({"iss": iss, "azp": "1234-abc.apps.googleusercontent.com",
            "aud": "1234-abc.apps.googleusercontent.com", "sub": "110169484474386276334", "email": "alice@acme.test",
            "email_verified": true, "iat": iat, "exp": exp}));
        let r = get(&stack, "/idp/x", &t);
        assert_eq!(r.status, 200, "{iss}: {}", r.body);
        assert_eq!(
            upstream(&r, "x-tollgate-subject").as_deref(),
            Some("110169484474386276334")
        );
    }

    // Okta: scp as an array, the client id in `cid`.
    let okta = idp("okta");
    let t = okta.token(json!({"ver": 1, "jti": "AT.Ydh0", "iss": "https://acme.okta.com/oauth2/default",
        "aud": "api://default", "iat": iat, "exp": exp, "cid": "0oa1b2c3d4", "uid": "00u1b2c3", "scp": ["read:data", "openid"],
        "auth_time": iat, "sub": "alice@acme.test"}));
    let r = get(&stack, "/idp/data/x", &t);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        upstream(&r, "x-tollgate-client-id").as_deref(),
        Some("0oa1b2c3d4")
    );
    assert_eq!(
        upstream(&r, "x-tollgate-scopes").as_deref(),
        Some("read:data openid")
    );
}

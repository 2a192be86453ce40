//! Per-user permissions and per-client default scopes (issue 10, defect 5): a token
//! carries what the client may ask for, what the user may hold and what was asked for;
//! a request without `scope` gets the client's default set; `tollgate:admin` is never
//! advertised and never reaches a user who may not hold it, whatever the client.

use serde_json::Value;
use support::http_agent;
use support::oauth::{
    authorize_url, code_request, exchange_code, post_form, refresh, Browser, Pkce,
};
use support::token_service::{basic_authorization, TokenService};

const CONSOLE: &str = "console";
const CONSOLE_REDIRECT: &str = "com.example.console:/cb";
const PORTAL: &str = "portal";
const PORTAL_REDIRECT: &str = "https://portal.example/cb";
const ALICE: &str = "alice";
const ROOT: &str = "root";
const PASSWORD: &str = "correct horse battery staple";
const ADMIN: &str = "tollgate:admin";

fn service() -> TokenService {
    TokenService::builder()
        // Both clients may ask for the admin scope (and the harness makes everything
        // they may ask for their default too).
        .public_client(CONSOLE, "read:data tollgate:admin", &[CONSOLE_REDIRECT])
        .client_with_redirects(
            PORTAL,
            "read:data write:data tollgate:admin",
            &[PORTAL_REDIRECT],
        )
        .user(ALICE, PASSWORD, "read:data write:data")
        .user(ROOT, PASSWORD, "read:data tollgate:admin")
        .start()
}

/// Signs `username` in at `client` asking for `scope` (none: no `scope` parameter);
/// returns the token response.
fn sign_in(service: &TokenService, client: &str, username: &str, scope: Option<&str>) -> Value {
    let redirect = if client == CONSOLE {
        CONSOLE_REDIRECT
    } else {
        PORTAL_REDIRECT
    };
    let pkce = Pkce::new();
    let mut params = code_request(client, redirect, scope.unwrap_or(""), "st", &pkce);
    if scope.is_none() {
        params.retain(|(name, _)| *name != "scope");
    }
    let url = authorize_url(&service.base_url(), &params);
    let code = Browser::new().log_in(&url, username, PASSWORD)["code"].clone();
    let (status, body) = if client == CONSOLE {
        exchange_code(
            &service.token_url(),
            client,
            &code,
            redirect,
            Some(&pkce.verifier),
        )
    } else {
        post_form(
            &service.token_url(),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("code_verifier", &pkce.verifier),
            ],
            Some(&basic_authorization(client, service.secret(client))),
        )
    };
    assert_eq!(status, 200, "{body}");
    body
}

/// `GET /admin/consumers` with `token`: status and error code.
fn admin_api(service: &TokenService, token: &str) -> (u16, Value) {
    let mut response = http_agent()
        .get(service.url("/admin/consumers"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .expect("GET /admin/consumers");
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().expect("JSON"))
}

fn string(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .to_owned()
}

#[test]
fn a_user_without_the_admin_scope_gets_no_admin_token_from_any_client() {
    let service = service();
    for client in [CONSOLE, PORTAL] {
        for scope in [Some("read:data tollgate:admin"), Some(ADMIN), None] {
            let body = sign_in(&service, client, ALICE, scope);
            let granted = string(&body, "scope");
            assert!(!granted.contains(ADMIN), "{client} {scope:?}: {body}");
            let (status, error) = admin_api(&service, &string(&body, "access_token"));
            assert_eq!(
                (status, error["error"].as_str()),
                (403, Some("insufficient_scope")),
                "{client} {scope:?}"
            );
            // Nor can a refresh add it.
            if client == CONSOLE {
                let (status, body) = refresh(
                    &service.token_url(),
                    client,
                    &string(&body, "refresh_token"),
                    Some(ADMIN),
                );
                assert_eq!(
                    (status, body["error"].as_str()),
                    (400, Some("invalid_scope"))
                );
            }
        }
    }
    // Alice asked for both and holds only read:data of what the console may ask for:
    // the response says what was granted (RFC 6749 §5.1).
    let body = sign_in(&service, CONSOLE, ALICE, Some("read:data tollgate:admin"));
    assert_eq!(body["scope"], "read:data");

    // A user who may hold it gets it, and the admin API lets them in.
    let root = sign_in(&service, CONSOLE, ROOT, Some("read:data tollgate:admin"));
    assert_eq!(root["scope"], "read:data tollgate:admin");
    assert_eq!(admin_api(&service, &string(&root, "access_token")).0, 200);

    // Taken away, it is gone from the next refresh on.
    let changed = service.cli(&[
        "users",
        "set-scopes",
        "--username",
        ROOT,
        "--scopes",
        "read:data",
    ]);
    assert!(changed.status.success(), "{changed:?}");
    let (status, body) = refresh(
        &service.token_url(),
        CONSOLE,
        &string(&root, "refresh_token"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read:data");
    assert_eq!(admin_api(&service, &string(&body, "access_token")).0, 403);

    // The public metadata never lists the admin scope.
    let mut response = http_agent()
        .get(service.url("/.well-known/oauth-authorization-server"))
        .call()
        .expect("metadata");
    let metadata: Value = response.body_mut().read_json().expect("JSON");
    assert_eq!(
        metadata["scopes_supported"],
        serde_json::json!(["read:data", "write:data"])
    );
}

#[test]
fn a_request_without_scope_gets_the_clients_default_set() {
    let service = service();
    let add = |service: &TokenService, args: &[&str]| -> String {
        let output = service.cli(args);
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("client_secret: "))
            .expect("secret")
            .to_owned()
    };
    let no_default = add(
        &service,
        &[
            "clients",
            "add",
            "--id",
            "batch",
            "--scopes",
            "read:data write:data tollgate:admin",
        ],
    );
    let with_default = add(
        &service,
        &[
            "clients",
            "add",
            "--id",
            "reporting",
            "--scopes",
            "read:data write:data tollgate:admin",
            "--default-scopes",
            "read:data",
        ],
    );
    let token_scope = |client: &str, secret: &str, scope: Option<&str>| -> Value {
        let mut response = service.request_token(client, secret, scope);
        assert_eq!(response.status(), 200);
        let body: Value = response.body_mut().read_json().expect("JSON");
        body["scope"].clone()
    };
    assert_eq!(
        token_scope("batch", &no_default, None),
        "",
        "no default: no scope"
    );
    assert_eq!(token_scope("reporting", &with_default, None), "read:data");
    assert_eq!(
        token_scope("reporting", &with_default, Some(ADMIN)),
        ADMIN,
        "asked for by name, within what the client may ask for"
    );

    // Defaults outside the client's scopes are refused at registration.
    let refused = service.cli(&[
        "clients",
        "add",
        "--id",
        "odd",
        "--scopes",
        "read:data",
        "--default-scopes",
        "write:data",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("the default scopes must be among the client's scopes"));

    // A user's sign-in without `scope` asks for the client's default set too.
    let added = service.cli(&[
        "clients",
        "add",
        "--id",
        "desktop",
        "--public",
        "--scopes",
        "read:data write:data",
        "--default-scopes",
        "read:data",
        "--redirect-uri",
        "http://127.0.0.1/cb",
    ]);
    assert!(added.status.success(), "{added:?}");
    let pkce = Pkce::new();
    let mut params = code_request("desktop", "http://127.0.0.1:4000/cb", "", "st", &pkce);
    params.retain(|(name, _)| *name != "scope");
    let login = Browser::new().get(&authorize_url(&service.base_url(), &params));
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(
        login.body.contains("<code>read:data</code>") && !login.body.contains("write:data"),
        "{}",
        login.body
    );
}

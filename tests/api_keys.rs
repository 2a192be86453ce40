//! API-key management in `tollgate-token-service`: the CLI, the admin API (and its
//! bearer-token guard), the key-set feed the gateway polls, and proof that no key is
//! ever stored, published or logged in plaintext.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use support::http_agent;
use support::token_service::TokenService;

/// A response reduced to what the assertions need.
struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// An RFC 6749 §5.2-shaped error with this status and code.
    fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        assert_eq!(body["error"], error, "{body}");
        assert!(body["error_description"].is_string(), "{body}");
    }
}

fn request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = match body {
        Some(body) => {
            req = req.header("content-type", "application/json");
            body.to_string()
        }
        None => String::new(),
    };
    let mut response = http_agent()
        .run(req.body(body).expect("request"))
        .expect("HTTP exchange");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

/// `field: value` lines of a CLI's standard output.
fn fields(output: &std::process::Output) -> BTreeMap<String, String> {
    assert!(
        output.status.success(),
        "CLI failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn sha256_hex(key: &str) -> String {
    hex(&hmac_sha256::Hash::hash(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every byte SQLite keeps for the database: the file and its WAL and shared memory.
fn database_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        if let Ok(content) = std::fs::read(&path) {
            bytes.extend(content);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Asserts that neither the key nor its random part is anywhere in `haystacks`.
fn assert_nowhere(key: &str, haystacks: &[(&str, &[u8])]) {
    let random = key.strip_prefix("tg_live_").expect("key prefix");
    for (name, haystack) in haystacks {
        assert!(
            !contains(haystack, random),
            "a plaintext key is in the {name}"
        );
    }
}

fn service_with_operator() -> (TokenService, String) {
    let service = TokenService::builder()
        .client("operator", "tollgate:admin")
        .client("reader", "read:data")
        .start();
    let token = service.client_credentials_token("operator", service.secret("operator"), None);
    (service, token)
}

#[test]
fn the_cli_manages_consumers_and_keys_and_the_feed_publishes_only_digests() {
    let service = TokenService::builder().start();
    fields(&service.cli(&[
        "consumers",
        "add",
        "--id",
        "partner-a",
        "--tenant",
        "acme",
        "--scopes",
        "read:data write:data",
        "--plan",
        "gold",
    ]));
    let created = fields(&service.cli(&[
        "api-keys",
        "create",
        "--consumer",
        "partner-a",
        "--expires-in",
        "3600",
        "--allow-cidr",
        "203.0.113.0/24",
    ]));
    let first = created["api_key"].clone();
    let first_id = created["id"].clone();
    assert!(
        first.starts_with("tg_live_") && first.len() == 8 + 43,
        "{first}"
    );
    assert!(first_id.starts_with("ak_"), "{first_id}");

    let rotated = fields(&service.cli(&["api-keys", "rotate", "--id", &first_id, "--disable-old"]));
    let second = rotated["api_key"].clone();
    assert_ne!(second, first);
    assert_eq!(rotated["allowed_cidrs"], "203.0.113.0/24");

    let listing = service.cli(&["api-keys", "list", "--consumer", "partner-a"]);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut states: Vec<(&str, &str)> = listing
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            Some((*cells.first()?, *cells.get(2)?))
        })
        .collect();
    states.sort_unstable();
    let mut expected = [
        (first_id.as_str(), "disabled"),
        (rotated["id"].as_str(), "enabled"),
    ];
    expected.sort_unstable();
    assert_eq!(states, expected, "{listing}");

    // The gateway's feed: digests, restrictions, states; strong ETag and 304.
    let feed = request("GET", &service.url("/api-keys"), None, &[], None);
    assert_eq!(feed.status, 200, "{}", feed.text);
    assert_eq!(feed.header("cache-control"), Some("no-cache"));
    let set = feed.json();
    let consumer = &set["consumers"][0];
    assert_eq!(consumer["id"], "partner-a");
    assert_eq!(consumer["tenant"], "acme");
    assert_eq!(consumer["plan"], "gold");
    assert_eq!(consumer["scopes"], json!(["read:data", "write:data"]));
    let by_id: BTreeMap<&str, &Value> = consumer["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| (key["id"].as_str().expect("id"), key))
        .collect();
    assert_eq!(by_id[first_id.as_str()]["hash"], sha256_hex(&first));
    assert_eq!(by_id[first_id.as_str()]["enabled"], false);
    assert_eq!(by_id[rotated["id"].as_str()]["hash"], sha256_hex(&second));
    assert_eq!(
        by_id[rotated["id"].as_str()]["allowed_cidrs"],
        json!(["203.0.113.0/24"])
    );
    let etag = feed.header("etag").expect("ETag").to_owned();
    let again = request(
        "GET",
        &service.url("/api-keys"),
        None,
        &[("if-none-match", &etag)],
        None,
    );
    assert_eq!((again.status, again.text.as_str()), (304, ""));

    fields(&service.cli(&["api-keys", "delete", "--id", &first_id]));
    let changed = request(
        "GET",
        &service.url("/api-keys"),
        None,
        &[("if-none-match", &etag)],
        None,
    );
    assert_eq!(changed.status, 200, "a deletion changes the set");
    assert_eq!(
        changed.json()["consumers"][0]["keys"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Refusals are clean errors.
    let unknown = service.cli(&["api-keys", "create", "--consumer", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no such consumer"));
    let bad_cidr = service.cli(&[
        "api-keys",
        "create",
        "--consumer",
        "partner-a",
        "--allow-cidr",
        "10.0.0.0/33",
    ]);
    assert!(!bad_cidr.status.success());
    assert!(String::from_utf8_lossy(&bad_cidr.stderr).contains("not an address block"));

    assert_nowhere(
        &first,
        &[
            ("database", &database_bytes(service.db_path())),
            ("key-set feed", feed.text.as_bytes()),
            ("service log", service.log().as_bytes()),
            ("key listing", listing.as_bytes()),
        ],
    );
    assert_nowhere(&second, &[("database", &database_bytes(service.db_path()))]);
}

#[test]
fn the_admin_api_needs_an_access_token_with_the_admin_scope() {
    let (service, operator) = service_with_operator();
    let url = service.url("/admin/api-keys");

    let missing = request("GET", &url, None, &[], None);
    missing.assert_error(401, "unauthorized");
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="tollgate""#)
    );

    let garbage = request("GET", &url, Some("not.a.token"), &[], None);
    garbage.assert_error(401, "invalid_token");
    assert!(garbage
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with(r#"Bearer realm="tollgate", error="invalid_token""#)));

    let reader = service.client_credentials_token("reader", service.secret("reader"), None);
    let forbidden = request("GET", &url, Some(&reader), &[], None);
    forbidden.assert_error(403, "insufficient_scope");
    assert!(forbidden
        .header("www-authenticate")
        .is_some_and(|v| v.ends_with(r#"scope="tollgate:admin""#)));

    assert_eq!(request("GET", &url, Some(&operator), &[], None).status, 200);

    // A revoked admin token stops working at once.
    let revoke = http_agent()
        .post(service.url("/revoke"))
        .header(
            "authorization",
            support::token_service::basic_authorization("operator", service.secret("operator")),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .send(format!("token={operator}"))
        .expect("POST /revoke");
    assert_eq!(revoke.status(), 200);
    request("GET", &url, Some(&operator), &[], None).assert_error(401, "invalid_token");
}

#[test]
fn the_admin_api_creates_lists_disables_rotates_and_deletes_keys() {
    let (service, operator) = service_with_operator();
    let admin = |method: &str, path: &str, body: Option<Value>| {
        request(
            method,
            &service.url(path),
            Some(&operator),
            &[],
            body.as_ref(),
        )
    };

    let consumer = json!({"id": "partner-a", "tenant": "acme", "scopes": "read:data"});
    let added = admin("POST", "/admin/consumers", Some(consumer.clone()));
    assert_eq!(added.status, 201, "{}", added.text);
    assert_eq!(added.json()["scopes"], json!(["read:data"]));
    admin("POST", "/admin/consumers", Some(consumer)).assert_error(409, "conflict");
    admin(
        "POST",
        "/admin/consumers",
        Some(json!({"id": "x", "scope": "typo"})),
    )
    .assert_error(400, "invalid_request");
    admin("POST", "/admin/consumers", Some(json!({"id": "has space"})))
        .assert_error(400, "invalid_request");
    let not_json = request(
        "POST",
        &service.url("/admin/consumers"),
        Some(&operator),
        &[("content-type", "text/plain")],
        None,
    );
    not_json.assert_error(400, "invalid_request");

    let created = admin(
        "POST",
        "/admin/api-keys",
        Some(
            json!({"consumer": "partner-a", "expires_in": 3600, "allowed_cidrs": ["198.51.100.0/24"]}),
        ),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let created = created.json();
    let key = created["api_key"].as_str().expect("api_key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("tg_live_"));
    assert_eq!(created["consumer"], "partner-a");
    assert_eq!(created["state"], "enabled");
    assert!(created["expires_at"].as_i64().is_some());
    admin(
        "POST",
        "/admin/api-keys",
        Some(json!({"consumer": "nobody"})),
    )
    .assert_error(404, "not_found");
    admin(
        "POST",
        "/admin/api-keys",
        Some(json!({"consumer": "partner-a", "expires_at": 1})),
    )
    .assert_error(400, "invalid_request");
    admin(
        "POST",
        "/admin/api-keys",
        Some(json!({"consumer": "partner-a", "allowed_cidrs": ["nope"]})),
    )
    .assert_error(400, "invalid_request");

    let listed = admin("GET", "/admin/api-keys?consumer=partner-a", None).json();
    let keys = listed["api_keys"].as_array().expect("api_keys");
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].get("api_key").is_none() && keys[0].get("hash").is_none(),
        "{listed}"
    );

    let disabled = admin("POST", &format!("/admin/api-keys/{id}/disable"), None);
    assert_eq!(disabled.json()["state"], "disabled");
    let enabled = admin("POST", &format!("/admin/api-keys/{id}/enable"), None);
    assert_eq!(enabled.json()["state"], "enabled");

    let rotated = admin(
        "POST",
        &format!("/admin/api-keys/{id}/rotate"),
        Some(json!({"disable_old": true})),
    );
    assert_eq!(rotated.status, 201, "{}", rotated.text);
    let rotated = rotated.json();
    let new_key = rotated["api_key"].as_str().expect("api_key").to_owned();
    assert_ne!(new_key, key);
    assert_eq!(rotated["allowed_cidrs"], json!(["198.51.100.0/24"]));
    assert_eq!(
        admin("GET", &format!("/admin/api-keys/{id}"), None).json()["state"],
        "disabled"
    );

    let deleted = admin("DELETE", &format!("/admin/api-keys/{id}"), None);
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    admin("GET", &format!("/admin/api-keys/{id}"), None).assert_error(404, "not_found");
    admin("DELETE", &format!("/admin/api-keys/{id}"), None).assert_error(404, "not_found");

    let removed = admin("DELETE", "/admin/consumers/partner-a", None);
    assert_eq!(removed.json()["removed_keys"], 1);
    assert_eq!(
        admin("GET", "/admin/consumers", None).json()["consumers"],
        json!([])
    );

    // The access log names the operator's client, never a key.
    let log = service.log();
    assert!(log.contains("POST /admin/api-keys 201"), "{log}");
    assert!(log.contains("client_id=operator"), "{log}");
    for plaintext in [&key, &new_key] {
        assert_nowhere(
            plaintext,
            &[
                ("service log", log.as_bytes()),
                ("database", &database_bytes(service.db_path())),
            ],
        );
    }
}

#[test]
fn a_pepper_makes_digests_hmacs_and_mixing_schemes_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pepper_file = dir.path().join("pepper");
    let pepper = "correct horse battery staple";
    std::fs::write(&pepper_file, format!("{pepper}\n")).expect("pepper");
    let pepper_arg = pepper_file.to_str().expect("path");
    let service = TokenService::builder()
        .serve_arg("--api-key-pepper-file", pepper_arg)
        .start();
    fields(&service.cli(&[
        "consumers",
        "add",
        "--id",
        "device-7",
        "--scopes",
        "read:data",
    ]));
    let created = fields(&service.cli(&[
        "--api-key-pepper-file",
        pepper_arg,
        "api-keys",
        "create",
        "--consumer",
        "device-7",
    ]));
    let key = &created["api_key"];
    let feed = request("GET", &service.url("/api-keys"), None, &[], None).json();
    assert_eq!(
        feed["consumers"][0]["keys"][0]["hash"],
        hex(&hmac_sha256::HMAC::mac(key.as_bytes(), pepper.as_bytes()))
    );

    let unpeppered = service.cli(&["api-keys", "create", "--consumer", "device-7"]);
    assert!(!unpeppered.status.success());
    assert!(
        String::from_utf8_lossy(&unpeppered.stderr).contains("HMAC-SHA256 digests under a pepper"),
        "{}",
        String::from_utf8_lossy(&unpeppered.stderr)
    );
    assert_nowhere(key, &[("database", &database_bytes(service.db_path()))]);
    assert!(!contains(&database_bytes(service.db_path()), pepper));
}

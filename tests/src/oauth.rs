//! The authorization code flow as a browser and a native app drive it: PKCE values,
//! the authorization URL, the login page (its form parsed out of the HTML and posted
//! back), the redirect to the app (read, never followed), and the token requests.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use rand::RngCore as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::token_service::form_urlencode;

/// A PKCE pair (RFC 7636, S256).
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

impl Pkce {
    /// A fresh random pair.
    pub fn new() -> Pkce {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

/// `{base}/authorize?…` with `params` form-encoded.
pub fn authorize_url(base: &str, params: &[(&str, &str)]) -> String {
    let query: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{name}={}", form_urlencode(value)))
        .collect();
    format!("{base}/authorize?{}", query.join("&"))
}

/// The usual authorization request of a public client: code, S256 challenge, state.
pub fn code_request<'a>(
    client_id: &'a str,
    redirect_uri: &'a str,
    scope: &'a str,
    state: &'a str,
    pkce: &'a Pkce,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", scope),
        ("state", state),
        ("code_challenge", &pkce.challenge),
        ("code_challenge_method", "S256"),
    ]
}

/// A response as a browser sees it.
pub struct Page {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// The login form on this page.
    pub fn form(&self) -> LoginForm {
        LoginForm::parse(&self.body)
    }

    /// The query parameters of the `Location` this page redirects to.
    pub fn redirect_params(&self) -> HashMap<String, String> {
        assert_eq!(
            self.status, 303,
            "expected a redirect to the app: {}",
            self.body
        );
        query_params(self.header("location"))
    }
}

/// The `<form>` of the login page: where it posts and its hidden fields.
pub struct LoginForm {
    pub method: String,
    pub action: String,
    pub hidden: Vec<(String, String)>,
}

impl LoginForm {
    pub fn parse(html: &str) -> LoginForm {
        let start = html
            .find("<form")
            .unwrap_or_else(|| panic!("no form in:\n{html}"));
        let end = start
            + html[start..]
                .find("</form>")
                .unwrap_or_else(|| panic!("unterminated form in:\n{html}"));
        let form = &html[start..end];
        let form_tag = &form[..form.find('>').expect("form tag end")];
        let mut hidden = Vec::new();
        let mut rest = form;
        while let Some(at) = rest.find("<input") {
            rest = &rest[at..];
            let tag = &rest[..rest.find('>').expect("input tag end")];
            if attribute(tag, "type").as_deref() == Some("hidden") {
                hidden.push((
                    attribute(tag, "name").expect("hidden field name"),
                    attribute(tag, "value").unwrap_or_default(),
                ));
            }
            rest = &rest[tag.len()..];
        }
        LoginForm {
            method: attribute(form_tag, "method").unwrap_or_default(),
            action: attribute(form_tag, "action").expect("form action"),
            hidden,
        }
    }
}

/// A browser: follows redirects on the origin it is on, and stops at a redirect
/// elsewhere (to the app's redirect URI), reporting it, as a native app reads it.
pub struct Browser {
    agent: ureq::Agent,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
        }
    }

    pub fn get(&self, url: &str) -> Page {
        let mut url = url.to_owned();
        for _ in 0..10 {
            let page = page(self.agent.get(&url).call().expect("GET"));
            let next = page
                .headers
                .get("location")
                .and_then(|location| location.to_str().ok())
                .filter(|_| (300..400).contains(&page.status))
                .and_then(|location| same_origin(&url, location));
            match next {
                Some(next) => url = next,
                None => return page,
            }
        }
        panic!("redirect loop from {url}");
    }

    /// Submits `form` with its hidden fields and `fields` (what the user typed and the
    /// button pressed), with `headers` added.
    pub fn submit(
        &self,
        form: &LoginForm,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        assert_eq!(form.method, "post");
        let mut request = self.agent.post(&form.action);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let pairs: Vec<(&str, &str)> = form
            .hidden
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .chain(fields.iter().copied())
            .collect();
        page(request.send_form(pairs).expect("POST form"))
    }

    /// Opens the authorization URL, logs in and approves; returns the parameters of
    /// the redirect to the app.
    pub fn log_in(
        &self,
        authorize_url: &str,
        username: &str,
        password: &str,
    ) -> HashMap<String, String> {
        let login = self.get(authorize_url);
        assert_eq!(login.status, 200, "login page: {}", login.body);
        let approved = self.submit(
            &login.form(),
            &[
                ("username", username),
                ("password", password),
                ("decision", "approve"),
            ],
            &[],
        );
        approved.redirect_params()
    }
}

/// Exchanges a code at `token_url` as a public client does (client_id, no secret).
pub fn exchange_code(
    token_url: &str,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", client_id),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    if let Some(verifier) = verifier {
        form.push(("code_verifier", verifier));
    }
    post_form(token_url, &form, None)
}

/// Refreshes as a public client does, optionally narrowing the scope.
pub fn refresh(
    token_url: &str,
    client_id: &str,
    refresh_token: &str,
    scope: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("refresh_token", refresh_token),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    post_form(token_url, &form, None)
}

/// POSTs a form (with an optional `Authorization` header); returns status and JSON.
pub fn post_form(url: &str, form: &[(&str, &str)], authorization: Option<&str>) -> (u16, Value) {
    let mut request = super::http_agent().post(url);
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let mut response = request.send_form(form.iter().copied()).expect("POST form");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{status}: not JSON ({err}): {text}"))
    };
    (status, body)
}

/// Decoded query parameters of a URL.
pub fn query_params(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, query)| query);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

/// `location` as an absolute URL if it stays on the origin of `url`.
fn same_origin(url: &str, location: &str) -> Option<String> {
    let origin_end = url.find("://").map(|at| at + 3)?;
    let origin = &url[..origin_end
        + url[origin_end..]
            .find('/')
            .unwrap_or(url.len() - origin_end)];
    if location.starts_with('/') && !location.starts_with("//") {
        Some(format!("{origin}{location}"))
    } else if location.starts_with(origin) && location[origin.len()..].starts_with(['/', '?']) {
        Some(location.to_owned())
    } else {
        None
    }
}

fn page(mut response: ureq::http::Response<ureq::Body>) -> Page {
    Page {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn decode(component: &str) -> String {
    percent_decode_str(&component.replace('+', " "))
        .decode_utf8()
        .expect("UTF-8 query component")
        .into_owned()
}

/// The value of `name="…"` in a tag, entity-decoded.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = start + tag[start..].find('"')?;
    Some(
        tag[start..end]
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

//! The HTML pages of `/authorize`: the login and consent form, and the error page for
//! requests that cannot be sent back to the client.
//!
//! Plain, accessible HTML: a language, a title, one heading, labelled fields, the
//! requested scopes as a list, errors announced with `role="alert"`, no script. Every
//! dynamic value is escaped. Pages are never cached or framed (clickjacking), and the
//! Content-Security-Policy allows nothing but the page's own inline style, by hash.

use std::fmt::Write as _;
use std::sync::LazyLock;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::protocol::scope::ScopeSet;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;\
padding:0 1rem;line-height:1.5}label{display:block;font-weight:600}\
input{display:block;width:100%;box-sizing:border-box;margin:.25rem 0 1rem;padding:.5rem;\
font-size:1rem}button{font-size:1rem;padding:.5rem 1.25rem;margin-right:.75rem}\
[role=alert]{color:#a00000;font-weight:600}";

/// `default-src 'none'` with the inline style allowed by its hash; no framing; no
/// `<base>`. No `form-action`: browsers apply it to the redirect after the POST, which
/// goes to the client's redirect URI.
static CONTENT_SECURITY_POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    let style_hash = STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    let policy = format!(
        "default-src 'none'; style-src 'sha256-{style_hash}'; frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// What the login and consent page shows.
pub struct LoginPage<'a> {
    /// The authorization endpoint's public URL.
    pub action: &'a str,
    /// The signed pending request: the anti-CSRF field.
    pub request: &'a str,
    pub client_id: &'a str,
    pub scopes: &'a ScopeSet,
    /// Typed in before a failed attempt.
    pub username: &'a str,
    pub error: Option<&'a str>,
}

pub fn login(status: StatusCode, page: &LoginPage<'_>) -> Response {
    let client = escape(page.client_id);
    let mut body = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        body,
        "<h1>Sign in</h1>\n<p><strong>{client}</strong> wants to access your account.</p>\n"
    );
    if page.scopes.is_empty() {
        body.push_str("<p>It asks for no specific permissions.</p>\n");
    } else {
        body.push_str("<p id=\"scopes\">It asks for these permissions:</p>\n<ul aria-labelledby=\"scopes\">\n");
        for scope in page.scopes.iter() {
            let _ = writeln!(body, "<li><code>{}</code></li>", escape(scope));
        }
        body.push_str("</ul>\n");
    }
    let invalid = match page.error {
        Some(error) => {
            let _ = writeln!(body, "<p role=\"alert\" id=\"error\">{}</p>", escape(error));
            " aria-invalid=\"true\" aria-describedby=\"error\""
        }
        None => "",
    };
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\n\
         <label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" value=\"{username}\" autocomplete=\"username\" \
         autocapitalize=\"none\" spellcheck=\"false\" required{invalid}>\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" \
         required{invalid}>\n\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button>\n\
         </form>\n",
        action = escape(page.action),
        request = escape(page.request),
        username = escape(page.username),
    );
    html(status, &format!("Sign in to {client}"), &body)
}

/// A request the server cannot hand back to a client (unknown client, unregistered
/// redirect URI, expired login form): the user is told, never redirected.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>This sign-in request cannot continue</h1>\n<p role=\"alert\">{}</p>\n\
         <p>Return to the application and start again.</p>\n",
        escape(message)
    );
    html(status, "Sign-in error", &body)
}

fn html(status: StatusCode, title: &str, main: &str) -> Response {
    let document = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{main}</main>\n\
         </body>\n</html>\n"
    );
    (status, security_headers(), document).into_response()
}

fn security_headers() -> [(HeaderName, HeaderValue); 8] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY.clone(),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ]
}

/// Escapes text for HTML content and double- or single-quoted attributes.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn text(response: Response) -> String {
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn login_page_is_escaped_labelled_and_unframeable() {
        let scopes: ScopeSet = "read:data write:data".parse().expect("scopes");
        let page = LoginPage {
            action: "https://auth.example/authorize",
            request: "req-1",
            client_id: "<evil>&\"app\"",
            scopes: &scopes,
            username: "a\"lice",
            error: Some("The username or password is incorrect."),
        };
        let response = login(StatusCode::OK, &page);
        let headers = response.headers().clone();
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let csp = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("style-src 'sha256-"));
        let body = text(response).await;
        assert!(body.contains("<html lang=\"en\">"));
        assert!(body.contains("&lt;evil&gt;&amp;&quot;app&quot;"));
        assert!(!body.contains("<evil>"));
        assert!(body.contains("value=\"a&quot;lice\""));
        assert!(
            body.contains("<label for=\"username\">") && body.contains("<label for=\"password\">")
        );
        assert!(body.contains("<li><code>read:data</code></li>"));
        assert!(body.contains("role=\"alert\""));
        assert!(body.contains("name=\"request\" value=\"req-1\""));
    }

    #[tokio::test]
    async fn error_page_never_links_anywhere() {
        let response = error(StatusCode::BAD_REQUEST, "Unknown client <x>.");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = text(response).await;
        assert!(body.contains("Unknown client &lt;x&gt;."));
        assert!(!body.contains("href") && !body.contains("<form"));
    }
}

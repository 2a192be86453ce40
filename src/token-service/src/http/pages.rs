//! The HTML pages: sign-in and consent for `/authorize`, the second step (one-time
//! code or passkey), the account pages where users manage their factors, and the error
//! page for requests that cannot be sent back to the client.
//!
//! Plain, accessible HTML: a language, a title, one heading, labelled fields, the
//! requested permissions described in words, errors announced with `role="alert"`.
//! Every dynamic value is escaped. Pages are never cached or framed (clickjacking), and
//! the Content-Security-Policy allows the page's own inline style (by hash), the
//! passkey script served from this origin, and nothing else. The QR code is inline SVG.

use std::fmt::Write as _;
use std::sync::LazyLock;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::signin::Offer;
use crate::protocol::scope::ScopeSet;
use crate::server::clock;
use crate::storage::factors::{Factor, Kind};

const STYLE: &str = "*{box-sizing:border-box}\
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
background:#f3f5f9;color:#1c2333;line-height:1.5}\
.top{display:flex;align-items:center;gap:.6rem;padding:1rem 1.5rem;background:#fff;\
border-bottom:1px solid #e3e7ef;font-weight:700;font-size:1.1rem;letter-spacing:.01em}\
.mark{display:inline-grid;place-items:center;width:2rem;height:2rem;border-radius:.5rem;\
background:linear-gradient(135deg,#3b5bdb,#7048e8);color:#fff;font-weight:800}\
main{max-width:28rem;margin:2.5rem auto;padding:2rem;background:#fff;border-radius:1rem;\
box-shadow:0 8px 30px rgba(28,35,51,.08)}\
@media (max-width:32rem){main{margin:0;border-radius:0;box-shadow:none;min-height:calc(100vh - 4rem)}}\
h1{font-size:1.45rem;margin:0 0 .5rem;line-height:1.25}\
.lead{color:#4a5468;margin:0 0 1.25rem}\
.scopes{list-style:none;padding:0;margin:0 0 1.5rem;border:1px solid #e3e7ef;border-radius:.75rem}\
.scopes li{padding:.7rem 1rem;border-top:1px solid #e3e7ef}.scopes li:first-child{border-top:0}\
.scopes strong{display:block;font-weight:600}\
.scopes code{font-size:.8rem;color:#6b7489}\
label{display:block;font-weight:600;margin-top:.75rem}\
input:not([type=hidden]){display:block;width:100%;margin:.3rem 0 .5rem;padding:.65rem .8rem;\
font-size:1rem;border:1px solid #c4cbd8;border-radius:.5rem}\
input:focus{outline:3px solid #bac8ff;border-color:#3b5bdb}\
input[aria-invalid=true]{border-color:#c92a2a}\
.actions{display:flex;gap:.75rem;margin-top:1.25rem;flex-wrap:wrap}\
button{font:inherit;font-weight:600;padding:.65rem 1.3rem;border-radius:.5rem;\
border:1px solid #c4cbd8;background:#fff;color:#1c2333;cursor:pointer}\
button.primary{background:#3b5bdb;border-color:#3b5bdb;color:#fff}\
button.danger{color:#c92a2a;border-color:#f1b0b0}\
button.wide{width:100%}\
.or{display:flex;align-items:center;gap:.75rem;color:#6b7489;margin:1.25rem 0;font-size:.9rem}\
.or::before,.or::after{content:'';flex:1;border-top:1px solid #e3e7ef}\
[role=alert]{background:#fff0f0;border:1px solid #f1b0b0;color:#a51d1d;padding:.7rem 1rem;\
border-radius:.5rem;font-weight:600}\
[role=status]{background:#ebfbee;border:1px solid #b2f2bb;color:#1b6b2a;padding:.7rem 1rem;\
border-radius:.5rem}\
.who{background:#f3f5f9;border-radius:.5rem;padding:.6rem 1rem}\
.factors{list-style:none;padding:0;margin:0 0 1rem}\
.factors li{display:flex;justify-content:space-between;align-items:center;gap:1rem;\
padding:.8rem 0;border-top:1px solid #e3e7ef}\
.factors small{display:block;color:#6b7489}\
.qr{margin:1rem auto;width:14rem}.qr svg{display:block;width:100%;height:auto}\
.secret{font-family:ui-monospace,monospace;word-break:break-all;background:#f3f5f9;\
padding:.5rem;border-radius:.4rem}\
.fine{color:#6b7489;font-size:.85rem}";

/// Where the passkey script is served (this origin only).
pub const PASSKEY_SCRIPT_PATH: &str = "/assets/passkeys.js";

/// `default-src 'none'`; the inline style by its hash and the passkey script from this
/// origin; no framing; no `<base>`. No `form-action`: browsers apply it to the redirect
/// after the POST, which goes to the client's redirect URI.
static CONTENT_SECURITY_POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    let style_hash = STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    let policy = format!(
        "default-src 'none'; style-src 'sha256-{style_hash}'; script-src 'self'; \
         img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// What the sign-in (and, for `/authorize`, consent) page shows.
pub struct LoginPage<'a> {
    /// Where the form posts.
    pub action: &'a str,
    /// The signed pending request: the anti-CSRF field (`None` on the account sign-in).
    pub request: Option<&'a str>,
    /// The application asking, and what for (`None`: signing in to the account pages).
    pub client: Option<(&'a str, &'a ScopeSet)>,
    /// Typed in before a failed attempt.
    pub username: &'a str,
    pub error: Option<&'a str>,
    /// The session's user and the form's consent value (bound to that session and
    /// this form): consent only, no credentials asked.
    pub signed_in_as: Option<(&'a str, &'a str)>,
    /// Offer "Sign in with a passkey".
    pub passkeys: bool,
}

/// What people are told a scope lets the application do.
pub fn describe_scope(scope: &str) -> String {
    match scope {
        "read:data" => "View your data".to_owned(),
        "write:data" => "Create, change and delete your data".to_owned(),
        "tollgate:admin" => "Manage API consumers and keys (administrator)".to_owned(),
        other => match other.split_once(':') {
            Some(("read", what)) => format!("View your {}", what.replace(['_', '-'], " ")),
            Some(("write", what)) => {
                format!("Create and change your {}", what.replace(['_', '-'], " "))
            }
            _ => format!("Use the “{other}” permission"),
        },
    }
}

pub fn login(status: StatusCode, page: &LoginPage<'_>) -> Response {
    let mut body = String::new();
    // Writing to a String cannot fail.
    let title = match page.client {
        Some((client_id, scopes)) => {
            let client = escape(client_id);
            let heading = if page.signed_in_as.is_some() {
                "Continue to"
            } else {
                "Sign in to continue to"
            };
            let _ = writeln!(body, "<h1>{heading} <strong>{client}</strong></h1>");
            if scopes.is_empty() {
                let _ = writeln!(
                    body,
                    "<p class=\"lead\">{client} asks for no specific permissions.</p>"
                );
            } else {
                let _ = writeln!(
                    body,
                    "<p class=\"lead\" id=\"scopes\">{client} will be able to:</p>\n\
                     <ul class=\"scopes\" aria-labelledby=\"scopes\">"
                );
                for scope in scopes.iter() {
                    let _ = writeln!(
                        body,
                        "<li><strong>{}</strong><code>{}</code></li>",
                        escape(&describe_scope(scope)),
                        escape(scope)
                    );
                }
                body.push_str("</ul>\n");
            }
            format!("Sign in to {client}")
        }
        None => {
            body.push_str(
                "<h1>Sign in to your account</h1>\n<p class=\"lead\">Manage your passkeys and \
                 authenticator app.</p>\n",
            );
            "Sign in".to_owned()
        }
    };
    let invalid = match page.error {
        Some(error) => {
            let _ = writeln!(body, "<p role=\"alert\" id=\"error\">{}</p>", escape(error));
            " aria-invalid=\"true\" aria-describedby=\"error\""
        }
        None => "",
    };
    let (approve, deny) = if page.client.is_some() {
        ("Approve", "<button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button>\n")
    } else {
        ("Sign in", "")
    };
    let _ = writeln!(
        body,
        "<form method=\"post\" action=\"{}\">",
        escape(page.action)
    );
    if let Some(request) = page.request {
        let _ = writeln!(
            body,
            "<input type=\"hidden\" name=\"request\" value=\"{}\">",
            escape(request)
        );
    }
    if let Some((username, consent)) = page.signed_in_as {
        let _ = write!(
            body,
            "<input type=\"hidden\" name=\"consent\" value=\"{}\">\n\
             <p class=\"who\">Signed in as <strong>{}</strong></p>\n\
             <div class=\"actions\">\
             <button class=\"primary\" type=\"submit\" name=\"decision\" value=\"approve\">{approve}</button>\n\
             {deny}</div>\n</form>\n",
            escape(consent),
            escape(username)
        );
        return html(status, &title, &body);
    }
    let _ = write!(
        body,
        "<label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" value=\"{username}\" autocomplete=\"username webauthn\" \
         autocapitalize=\"none\" spellcheck=\"false\" required{invalid}>\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" \
         required{invalid}>\n\
         <div class=\"actions\">\
         <button class=\"primary\" type=\"submit\" name=\"decision\" value=\"approve\">{approve}</button>\n\
         {deny}</div>\n",
        username = escape(page.username),
    );
    if page.passkeys {
        body.push_str(
            "<p class=\"or\">or</p>\n\
             <button class=\"wide\" type=\"submit\" name=\"method\" value=\"passkey\" formnovalidate \
             id=\"passkey-sign-in\">Sign in with a passkey</button>\n",
        );
    }
    body.push_str("</form>\n");
    html(status, &title, &body)
}

/// The second step after the password (or a passkey alone).
pub struct SecondStep<'a> {
    pub action: &'a str,
    /// Fields carried through (the pending request, the sealed progress).
    pub hidden: &'a [(&'a str, &'a str)],
    pub username: &'a str,
    /// The application asking, if any.
    pub context: Option<&'a str>,
    pub offer: &'a Offer,
    pub error: Option<&'a str>,
}

pub fn second_step(status: StatusCode, page: &SecondStep<'_>) -> Response {
    let mut body = String::from("<h1>Verify it’s you</h1>\n");
    let why = match page.context {
        Some(client) => format!("{} asks for extra proof that it is you.", escape(client)),
        None => "Your account is protected with a second step.".to_owned(),
    };
    let _ = writeln!(
        body,
        "<p class=\"lead\">Signing in as <strong>{}</strong>. {why}</p>",
        escape(page.username)
    );
    if let Some(error) = page.error {
        let _ = writeln!(body, "<p role=\"alert\" id=\"error\">{}</p>", escape(error));
    }
    let hidden: String = page
        .hidden
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                escape(name),
                escape(value)
            )
        })
        .collect();
    let action = escape(page.action);
    if let Some((options, ceremony)) = &page.offer.passkey {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{action}\" id=\"passkey-form\" data-passkey=\"get\">\n{hidden}\
             <input type=\"hidden\" name=\"ceremony\" value=\"{ceremony}\">\n\
             <input type=\"hidden\" name=\"credential\" value=\"\">\n\
             <input type=\"hidden\" name=\"decision\" value=\"approve\">\n\
             <script type=\"application/json\" class=\"passkey-options\">{options}</script>\n\
             <button class=\"primary wide\" type=\"button\" id=\"use-passkey\">Use your passkey</button>\n\
             </form>\n",
            ceremony = escape(ceremony),
            options = script_json(options),
        );
    }
    if page.offer.totp {
        if page.offer.passkey.is_some() {
            body.push_str("<p class=\"or\">or</p>\n");
        }
        let invalid = if page.error.is_some() {
            " aria-invalid=\"true\" aria-describedby=\"error\""
        } else {
            ""
        };
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{action}\">\n{hidden}\
             <label for=\"otp\">6-digit code from your authenticator app</label>\n\
             <input id=\"otp\" name=\"otp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" \
             pattern=\"[0-9 ]{{6,8}}\" maxlength=\"8\" required autofocus{invalid}>\n\
             <div class=\"actions\"><button class=\"primary\" type=\"submit\" name=\"decision\" \
             value=\"approve\">Verify</button></div>\n</form>\n"
        );
    }
    let _ = writeln!(
        body,
        "<script src=\"{}\" defer></script>",
        escape(&script_url(page.action))
    );
    html(status, "Verify it’s you", &body)
}

/// The account page: the user's factors and what they can do with them.
pub struct AccountPage<'a> {
    pub base: &'a str,
    pub username: &'a str,
    pub factors: &'a [Factor],
    /// Anti-CSRF value of the session, for every form.
    pub csrf: &'a str,
    pub notice: Option<&'a str>,
    pub error: Option<&'a str>,
    pub passkeys: bool,
}

pub fn account(status: StatusCode, page: &AccountPage<'_>) -> Response {
    let base = escape(page.base);
    let csrf = escape(page.csrf);
    let mut body = format!(
        "<h1>Sign-in and security</h1>\n<p class=\"lead\">Signed in as <strong>{}</strong></p>\n",
        escape(page.username)
    );
    if let Some(notice) = page.notice {
        let _ = writeln!(body, "<p role=\"status\">{}</p>", escape(notice));
    }
    if let Some(error) = page.error {
        let _ = writeln!(body, "<p role=\"alert\">{}</p>", escape(error));
    }
    body.push_str("<h2>Second factors</h2>\n");
    if page.factors.is_empty() {
        body.push_str(
            "<p>You sign in with your password only. Add a passkey or an authenticator app \
             so that apps which ask for stronger sign-in can let you in.</p>\n",
        );
    } else {
        body.push_str("<ul class=\"factors\">\n");
        for factor in page.factors {
            let kind = match factor.kind {
                Kind::Totp => "Authenticator app",
                Kind::Passkey => "Passkey",
            };
            let used = factor.last_used_at.map_or_else(
                || "never used".to_owned(),
                |at| format!("last used {}", day(at)),
            );
            let _ = write!(
                body,
                "<li><span><strong>{label}</strong><small>{kind} · added {added} · {used}</small></span>\n\
                 <form method=\"post\" action=\"{base}/account/factors/remove\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"factor_id\" value=\"{id}\">\
                 <button class=\"danger\" type=\"submit\" aria-label=\"Remove {label}\">Remove</button>\
                 </form></li>\n",
                label = escape(&factor.label),
                added = day(factor.created_at),
                id = escape(&factor.factor_id),
            );
        }
        body.push_str("</ul>\n");
    }
    body.push_str("<div class=\"actions\">\n");
    if page.passkeys {
        let _ = writeln!(
            body,
            "<form method=\"get\" action=\"{base}/account/passkeys/new\"><button class=\"primary\" \
             type=\"submit\">Add a passkey</button></form>"
        );
    }
    if !page.factors.iter().any(|factor| factor.kind == Kind::Totp) {
        let _ = writeln!(
            body,
            "<form method=\"get\" action=\"{base}/account/totp/new\"><button type=\"submit\">\
             Set up an authenticator app</button></form>"
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{base}/account/sign-out\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Sign out</button></form>\n</div>\n"
    );
    html(status, "Sign-in and security", &body)
}

/// Enrolling an authenticator app: the QR code, the key typed by hand, the first code.
pub struct TotpEnrolment<'a> {
    pub base: &'a str,
    pub qr_svg: &'a str,
    pub seed: &'a str,
    /// The sealed pending enrolment.
    pub enrolment: &'a str,
    pub csrf: &'a str,
    pub error: Option<&'a str>,
}

pub fn totp_enrolment(status: StatusCode, page: &TotpEnrolment<'_>) -> Response {
    let mut body = String::from(
        "<h1>Set up an authenticator app</h1>\n<p class=\"lead\">Scan this code with your \
         authenticator app (Google Authenticator, 1Password, Authy, …), then enter the \
         6-digit code it shows.</p>\n",
    );
    let _ = writeln!(
        body,
        "<div class=\"qr\" role=\"img\" aria-label=\"QR code of your authenticator key\">{}</div>",
        page.qr_svg
    );
    let _ = writeln!(
        body,
        "<p class=\"fine\">Can’t scan it? Enter this key instead:</p>\n<p class=\"secret\" id=\"totp-key\">{}</p>",
        escape(page.seed)
    );
    if let Some(error) = page.error {
        let _ = writeln!(body, "<p role=\"alert\" id=\"error\">{}</p>", escape(error));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{base}/account/totp\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <input type=\"hidden\" name=\"enrolment\" value=\"{enrolment}\">\n\
         <label for=\"label\">Name</label>\n\
         <input id=\"label\" name=\"label\" value=\"Authenticator app\" maxlength=\"64\" required>\n\
         <label for=\"otp\">6-digit code</label>\n\
         <input id=\"otp\" name=\"otp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" \
         maxlength=\"8\" required>\n\
         <div class=\"actions\"><button class=\"primary\" type=\"submit\">Turn on</button></div>\n\
         </form>\n<p><a href=\"{base}/account\">Cancel</a></p>\n",
        base = escape(page.base),
        csrf = escape(page.csrf),
        enrolment = escape(page.enrolment),
    );
    html(status, "Set up an authenticator app", &body)
}

/// Registering a passkey.
pub struct PasskeyRegistration<'a> {
    pub base: &'a str,
    pub options: &'a str,
    pub ceremony: &'a str,
    pub csrf: &'a str,
    pub error: Option<&'a str>,
}

pub fn passkey_registration(status: StatusCode, page: &PasskeyRegistration<'_>) -> Response {
    let mut body = String::from(
        "<h1>Add a passkey</h1>\n<p class=\"lead\">Your device will ask you to confirm with \
         your fingerprint, face, PIN or security key. Passkeys cannot be phished.</p>\n",
    );
    if let Some(error) = page.error {
        let _ = writeln!(body, "<p role=\"alert\" id=\"error\">{}</p>", escape(error));
    }
    let base = escape(page.base);
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{base}/account/passkeys\" id=\"passkey-form\" data-passkey=\"create\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <input type=\"hidden\" name=\"ceremony\" value=\"{ceremony}\">\n\
         <input type=\"hidden\" name=\"credential\" value=\"\">\n\
         <script type=\"application/json\" class=\"passkey-options\">{options}</script>\n\
         <label for=\"label\">Name</label>\n\
         <input id=\"label\" name=\"label\" value=\"Passkey\" maxlength=\"64\" required>\n\
         <div class=\"actions\"><button class=\"primary\" type=\"button\" id=\"use-passkey\">\
         Create passkey</button></div>\n</form>\n<p><a href=\"{base}/account\">Cancel</a></p>\n\
         <script src=\"{base}{PASSKEY_SCRIPT_PATH}\" defer></script>\n",
        csrf = escape(page.csrf),
        ceremony = escape(page.ceremony),
        options = script_json(page.options),
    );
    html(status, "Add a passkey", &body)
}

/// The date of a Unix time, for people (`2026-11-29`).
fn day(unix: i64) -> String {
    let text = clock::rfc3339(unix);
    text.get(..10).unwrap_or(&text).to_owned()
}

/// The passkey script's URL next to a form's `action` (same origin and base path).
fn script_url(action: &str) -> String {
    let base = action
        .strip_suffix("/authorize")
        .or_else(|| action.strip_suffix("/account/sign-in"))
        .unwrap_or("");
    format!("{base}{PASSKEY_SCRIPT_PATH}")
}

/// JSON inside `<script type="application/json">`: no `<` can end the element.
fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
}

/// A request the server cannot hand back to a client (unknown client, unregistered
/// redirect URI, expired login form): the user is told, never redirected.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>This sign-in request cannot continue</h1>\n<p role=\"alert\">{}</p>\n\
         <p class=\"lead\">Go back to the application you came from and start again.</p>\n",
        escape(message)
    );
    html(status, "Sign-in error", &body)
}

pub fn html(status: StatusCode, title: &str, main: &str) -> Response {
    let document = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · Tollgate</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header class=\"top\"><span class=\"mark\" aria-hidden=\"true\">T</span>Tollgate</header>\n\
         <main>\n{main}</main>\n</body>\n</html>\n"
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
pub fn escape(text: &str) -> String {
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
            request: Some("req-1"),
            client: Some(("<evil>&\"app\"", &scopes)),
            username: "a\"lice",
            error: Some("The username or password is incorrect."),
            signed_in_as: None,
            passkeys: false,
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
        assert!(body.contains("<li><strong>View your data</strong><code>read:data</code></li>"));
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

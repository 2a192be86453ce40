//! `/authorize` (RFC 6749 §4.1.1, RFC 7636 §4.3, RFC 9700): the authorization code
//! flow's front channel.
//!
//! `GET` validates the request. The client and redirect URI come first: if either is
//! wrong, the user sees an error page and is never redirected (RFC 6749 §4.1.2.1).
//! Every later problem goes back to the redirect URI as `error`, `error_description`,
//! `state` and `iss` (RFC 9207). A valid request is signed into the login and consent
//! page that is shown ([`crate::protocol::pending`]): the server holds nothing for it. `POST` is that page's form: Deny sends `access_denied`;
//! Approve checks the user's password (throttled like client secrets, one Argon2
//! verification known user or not) and redirects with a single-use code.
//!
//! Redirects are `303 See Other`, so that the browser follows them with a GET and never
//! re-posts the password to the client (RFC 9700 §4.12).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::form::{self, Form};
use super::pages::{self, LoginPage};
use super::signin::{self, Offer, Session, StepFailure};
use super::{blocking, client_ip, AppState, LogContext};
use crate::protocol::authentication::{self, Authentication, Level, Method};
use crate::protocol::codes::{self, NewCode};
use crate::protocol::dpop;
use crate::protocol::errors::{no_store_headers, OAuthError};
use crate::protocol::pending::{PendingAuthorization, SignedForm};
use crate::protocol::scope::ScopeSet;
use crate::protocol::{pkce, redirect_uri};
use crate::server::clock;
use crate::server::throttle::Blocked;
use crate::storage::clients::{self, ClientType};
use crate::storage::users::User;

/// Longest `state` carried through; clients commonly use a random value or a short JWT.
const MAX_STATE_LEN: usize = 2048;
const FIELDS: &[&str] = &[
    "request",
    "username",
    "password",
    "decision",
    "method",
    "signin",
    "otp",
    "ceremony",
    "credential",
    "consent",
];
const INCORRECT_LOGIN: &str = "The username or password is incorrect.";
const EXPIRED_FORM: &str = "This sign-in form has expired or was already used.";
const NO_PASSKEY: &str = "No passkey is set up for this account. Sign in with your password.";

/// A login form posted back: its sealed value (shown again on a retry) and what it
/// holds.
#[derive(Clone)]
struct Posted {
    value: String,
    form: SignedForm,
}

/// Why a request cannot proceed.
enum Refusal {
    /// Shown to the user: the client or redirect URI cannot be trusted.
    Page(&'static str),
    /// Sent back to the client's redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: &'static str,
    },
}

pub async fn start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let validated = {
        let state = Arc::clone(&state);
        blocking(move || {
            state
                .db
                .with(|conn| validate(conn, &query.unwrap_or_default()))
                .map_err(|err| OAuthError::internal("validating an authorization request", err))
        })
        .await
    };
    let (authorization, prompt_none) = match validated {
        Ok(Ok(validated)) => validated,
        Ok(Err(refusal)) => return refuse(&state, refusal),
        Err(_) => return internal_error(),
    };
    let client_id = authorization.client_id.clone();
    let session = match signin::current_session(&state, &headers).await {
        Ok(session) => session.filter(|session| counts(&authorization, session)),
        Err(_) => return internal_error(),
    };
    let required = authorization.required_level();
    if prompt_none {
        // Every grant shows the consent page: without interaction there is none.
        let error = if session.is_some_and(|s| s.authentication.level() >= required) {
            "consent_required"
        } else {
            "login_required"
        };
        return refuse(
            &state,
            Refusal::Redirect {
                redirect_uri: authorization.redirect_uri,
                state: authorization.state,
                error,
                description: "prompt=none, but the user must interact",
            },
        );
    }
    let request = state.login_forms.seal(authorization.clone(), clock::now());
    let posted = match state.login_forms.open(&request, clock::now()) {
        Some(form) => Posted {
            value: request,
            form,
        },
        None => return internal_error(),
    };
    let response = match session {
        Some(session) if session.authentication.level() >= required => {
            let consent = consent_value(&state, &posted, &session);
            login_page(
                &state,
                &posted,
                &session.username,
                None,
                Some((&session.username, &consent)),
            )
        }
        // Signed in, but not strongly enough: ask for the missing factor only.
        Some(session) => {
            let methods = session.authentication.methods.clone();
            match find_user(&state, &session.username).await {
                Ok(Some(user)) => second_step(&state, &posted, &user, methods, None).await,
                Ok(None) => login_page(&state, &posted, "", None, None),
                Err(_) => internal_error(),
            }
        }
        None => login_page(&state, &posted, "", None, None),
    };
    with_client(response, &client_id)
}

pub async fn decide(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let ip = client_ip(&state, peer, request.headers());
    let headers = request.headers().clone();
    let form = match form::read(request, FIELDS).await {
        Ok(form) => form,
        Err(_) => {
            return pages::error(
                StatusCode::BAD_REQUEST,
                "The sign-in form was not sent correctly.",
            )
        }
    };
    let posted = form.get("request").and_then(|value| {
        let opened = state.login_forms.open(value, clock::now())?;
        Some(Posted {
            value: value.to_owned(),
            form: opened,
        })
    });
    let Some(posted) = posted else {
        return pages::error(StatusCode::BAD_REQUEST, EXPIRED_FORM);
    };
    let client_id = posted.form.authorization.client_id.clone();
    // "Sign in with a passkey" is an approval too.
    let decision = form
        .get("decision")
        .or_else(|| (form.get("method") == Some("passkey")).then_some("approve"));
    let response = match decision {
        Some("approve") => approve(&state, posted, &form, ip, &headers).await,
        Some("deny") => {
            let authorization = posted.form.authorization;
            refuse(
                &state,
                Refusal::Redirect {
                    redirect_uri: authorization.redirect_uri,
                    state: authorization.state,
                    error: "access_denied",
                    description: "the user denied the request",
                },
            )
        }
        _ => pages::error(StatusCode::BAD_REQUEST, "Choose Allow or Cancel."),
    };
    with_client(response, &client_id)
}

/// The consent page's value for `session` and this form.
fn consent_value(state: &AppState, posted: &Posted, session: &Session) -> String {
    state.sessions.mac(&format!(
        "consent:{}:{}:{}",
        posted.form.nonce(),
        session.user_id,
        session.authentication.auth_time
    ))
}

/// Whether a session may stand in for signing in again: not when the request says
/// `prompt=login`, nor when the sign-in is older than `max_age`.
fn counts(authorization: &PendingAuthorization, session: &Session) -> bool {
    let age = clock::now() - session.authentication.auth_time;
    !authorization.prompt_login && authorization.max_age.is_none_or(|max_age| age <= max_age)
}

/// Checks the request in the order RFC 6749 §4.1.2.1 requires.
fn validate(
    conn: &rusqlite::Connection,
    query: &str,
) -> rusqlite::Result<Result<(PendingAuthorization, bool), Refusal>> {
    let Ok(params) = Form::parse(query.as_bytes()) else {
        return Ok(Err(Refusal::Page(
            "The authorization request is malformed or repeats a parameter.",
        )));
    };
    let Some(client_id) = params.get("client_id") else {
        return Ok(Err(Refusal::Page(
            "The authorization request names no client.",
        )));
    };
    let Some(client) = clients::find(conn, client_id)? else {
        return Ok(Err(Refusal::Page(
            "The application is not registered here.",
        )));
    };
    let Some(requested_uri) = params.get("redirect_uri") else {
        return Ok(Err(Refusal::Page(
            "The authorization request has no redirect_uri.",
        )));
    };
    let registered = clients::redirect_uris(conn, client_id)?;
    if !registered
        .iter()
        .any(|uri| redirect_uri::matches(uri, requested_uri))
    {
        return Ok(Err(Refusal::Page(
            "The redirect_uri is not registered for this application.",
        )));
    }

    let state = params
        .get("state")
        .filter(|state| state.len() <= MAX_STATE_LEN);
    let back = |error, description| {
        Ok(Err(Refusal::Redirect {
            redirect_uri: requested_uri.to_owned(),
            state: state.map(str::to_owned),
            error,
            description,
        }))
    };
    if params.get("state").is_some() && state.is_none() {
        return back("invalid_request", "state is too long");
    }
    match params.get("response_type") {
        Some("code") => {}
        None => return back("invalid_request", "response_type is missing"),
        Some(_) => {
            return back(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
    }
    let scopes = match params.get("scope").map(str::parse::<ScopeSet>) {
        None => client.default_scopes.clone(),
        Some(Ok(requested)) if requested.is_subset(&client.scopes) => requested,
        Some(_) => {
            return back(
                "invalid_scope",
                "the requested scope is invalid or exceeds the scopes allowed for this client",
            )
        }
    };
    let code_challenge =
        match (
            params.get("code_challenge"),
            params.get("code_challenge_method"),
        ) {
            (None, None) => None,
            (Some(challenge), Some(pkce::S256)) if pkce::is_valid_challenge(challenge) => {
                Some(challenge.to_owned())
            }
            (Some(_), Some(pkce::S256)) => {
                return back(
                    "invalid_request",
                    "code_challenge must be 43 base64url characters (S256)",
                )
            }
            (Some(_), None) | (_, Some(_)) => return back(
                "invalid_request",
                "code_challenge_method must be S256, with a code_challenge; plain is not supported",
            ),
        };
    if code_challenge.is_none() && client.client_type == ClientType::Public {
        return back(
            "invalid_request",
            "public clients must use PKCE: send code_challenge with code_challenge_method=S256",
        );
    }
    let dpop_jkt = params.get("dpop_jkt");
    if dpop_jkt.is_some_and(|jkt| !dpop::is_thumbprint(jkt)) {
        return back(
            "invalid_request",
            "dpop_jkt must be a JWK SHA-256 thumbprint (43 base64url characters)",
        );
    }
    // OpenID Connect Core §3.1.2.1 `acr_values`, `max_age` and `prompt`.
    let acr = match params.get("acr_values") {
        None => None,
        Some(values) => match values
            .split_ascii_whitespace()
            .filter_map(Level::from_acr)
            .min()
        {
            Some(level) => Some(level.acr().to_owned()),
            None => {
                return back(
                    "unmet_authentication_requirements",
                    "none of the acr_values is supported here (see acr_values_supported)",
                )
            }
        },
    };
    let max_age = match params.get("max_age").map(str::parse::<u32>) {
        None => None,
        Some(Ok(max_age)) => Some(i64::from(max_age)),
        Some(Err(_)) => return back("invalid_request", "max_age must be a number of seconds"),
    };
    let prompts: Vec<&str> = params
        .get("prompt")
        .map(|prompt| prompt.split_ascii_whitespace().collect())
        .unwrap_or_default();
    if prompts
        .iter()
        .any(|prompt| !matches!(*prompt, "none" | "login" | "consent" | "select_account"))
    {
        return back(
            "invalid_request",
            "prompt may only be none, login, consent or select_account",
        );
    }
    let prompt_none = prompts.contains(&"none");
    if prompt_none && prompts.len() > 1 {
        return back(
            "invalid_request",
            "prompt=none cannot be combined with other values",
        );
    }
    Ok(Ok((
        PendingAuthorization {
            client_id: client.client_id,
            redirect_uri: requested_uri.to_owned(),
            scopes,
            state: state.map(str::to_owned),
            code_challenge,
            acr,
            max_age,
            prompt_login: prompts.contains(&"login"),
            dpop_jkt: dpop_jkt.map(str::to_owned),
        },
        prompt_none,
    )))
}

/// Signs the user in (password, then a second factor if the request needs one; a
/// passkey alone; or the session) and redirects with a code.
async fn approve(
    state: &Arc<AppState>,
    posted: Posted,
    form: &Form,
    ip: IpAddr,
    headers: &HeaderMap,
) -> Response {
    let authorization = &posted.form.authorization;
    let required = authorization.required_level();
    let username = form.get("username").unwrap_or_default().to_owned();

    // The second step: a one-time code or a passkey.
    if let Some(value) = form.get("signin") {
        let Some(progress) = signin::open_progress(state, value, posted.form.nonce()) else {
            return pages::error(StatusCode::BAD_REQUEST, EXPIRED_FORM);
        };
        let user = match find_user(state, &progress.username).await {
            Ok(Some(user)) if user.user_id == progress.user_id => user,
            Ok(_) => return pages::error(StatusCode::BAD_REQUEST, EXPIRED_FORM),
            Err(_) => return internal_error(),
        };
        return match signin::check_second_factor(state, &progress, form, ip).await {
            Ok((signed_in, factor_id)) if signed_in.level() >= required => {
                finish(state, posted, &user, signed_in, Some(vec![factor_id])).await
            }
            Ok(_) => unmet(state, posted),
            Err(StepFailure::Wrong(message)) => {
                second_step(
                    state,
                    &posted,
                    &user,
                    progress.methods,
                    Some((message, None)),
                )
                .await
            }
            Err(StepFailure::Blocked(blocked)) => {
                let message = too_many(&blocked);
                second_step(
                    state,
                    &posted,
                    &user,
                    progress.methods,
                    Some((&message, Some(blocked))),
                )
                .await
            }
            Err(StepFailure::Expired) => pages::error(StatusCode::BAD_REQUEST, EXPIRED_FORM),
            Err(StepFailure::Internal(_)) => internal_error(),
        };
    }

    // A passkey alone.
    if form.get("method") == Some("passkey") {
        if username.is_empty() {
            return login_page(
                state,
                &posted,
                "",
                Some("Enter your username, then use your passkey."),
                None,
            );
        }
        return match find_user(state, &username).await {
            Ok(Some(user)) => match signin::offer(state, &user.user_id, &[], required).await {
                Ok(Some(offer)) if offer.passkey.is_some() => {
                    second_step_with(state, &posted, &user, Vec::new(), offer, None)
                }
                Ok(_) => login_page(state, &posted, &username, Some(NO_PASSKEY), None),
                Err(_) => internal_error(),
            },
            Ok(None) => login_page(state, &posted, &username, Some(NO_PASSKEY), None),
            Err(_) => internal_error(),
        };
    }

    // Continue as the signed-in user: no credentials posted.
    if form.get("password").is_none() && username.is_empty() {
        let session = match signin::current_session(state, headers).await {
            // The consent value binds the approval to this form and this session, on
            // top of the cookie's SameSite=Lax.
            Ok(session) => session.filter(|session| {
                counts(authorization, session)
                    && session.authentication.level() >= required
                    && form.get("consent").is_some_and(|consent| {
                        signin::same(consent, &consent_value(state, &posted, session))
                    })
            }),
            Err(_) => return internal_error(),
        };
        let Some(session) = session else {
            return login_page(state, &posted, "", Some("Sign in to continue."), None);
        };
        return match find_user(state, &session.username).await {
            Ok(Some(user)) if user.user_id == session.user_id => {
                finish(state, posted, &user, session.authentication, None).await
            }
            Ok(_) => login_page(state, &posted, "", Some("Sign in to continue."), None),
            Err(_) => internal_error(),
        };
    }

    let password = form.get("password").unwrap_or_default().to_owned();
    if username.is_empty() || password.is_empty() {
        return login_page(
            state,
            &posted,
            &username,
            Some("Enter your username and password."),
            None,
        );
    }
    let user = match signin::check_password(
        state,
        &username,
        password,
        ip,
        Some(&posted.form.authorization.client_id),
    )
    .await
    {
        Ok(Ok(Some(user))) => user,
        Ok(Ok(None)) => return login_page(state, &posted, &username, Some(INCORRECT_LOGIN), None),
        Ok(Err(blocked)) => {
            let message = format!(
                "Too many failed sign-in attempts. Try again in {} seconds.",
                blocked.retry_after_secs()
            );
            let mut response = login_page(state, &posted, &username, Some(&message), None);
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(blocked.retry_after_secs()),
            );
            return response;
        }
        Err(_) => return internal_error(),
    };
    let signed_in = Authentication::new(clock::now(), vec![Method::Pwd]);
    if signed_in.level() >= required {
        return finish(state, posted, &user, signed_in, Some(Vec::new())).await;
    }
    second_step(state, &posted, &user, signed_in.methods, None).await
}

/// The second-step page for `user`, offering the factors that reach the request's
/// level; if they have none, the request fails as OpenID Connect says.
async fn second_step(
    state: &Arc<AppState>,
    posted: &Posted,
    user: &User,
    methods: Vec<Method>,
    error: Option<(&str, Option<Blocked>)>,
) -> Response {
    let required = posted.form.authorization.required_level();
    match signin::offer(state, &user.user_id, &methods, required).await {
        Ok(Some(offer)) => second_step_with(state, posted, user, methods, offer, error),
        Ok(None) => unmet(state, posted.clone()),
        Err(_) => internal_error(),
    }
}

fn second_step_with(
    state: &AppState,
    posted: &Posted,
    user: &User,
    methods: Vec<Method>,
    offer: Offer,
    error: Option<(&str, Option<Blocked>)>,
) -> Response {
    let authorization = &posted.form.authorization;
    let progress = signin::new_progress(
        user,
        methods,
        authorization.required_level(),
        posted.form.nonce(),
    );
    let action = state.config.endpoint("/authorize");
    let page = pages::SecondStep {
        action: &action,
        hidden: &[
            ("request", &posted.value),
            ("signin", &signin::seal_progress(state, &progress)),
        ],
        username: &user.username,
        context: Some(&authorization.client_id),
        offer: &offer,
        error: error.as_ref().map(|(message, _)| *message),
    };
    let blocked = error.and_then(|(_, blocked)| blocked);
    let status = if blocked.is_some() {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::OK
    };
    let mut response = pages::second_step(status, &page);
    if let Some(blocked) = blocked {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(blocked.retry_after_secs()),
        );
    }
    response
}

/// The request asks for more than this user can prove (OpenID Connect Unmet
/// Authentication Requirements 1.0): never a weaker token.
fn unmet(state: &AppState, posted: Posted) -> Response {
    let authorization = posted.form.authorization;
    refuse(
        state,
        Refusal::Redirect {
            redirect_uri: authorization.redirect_uri,
            state: authorization.state,
            error: "unmet_authentication_requirements",
            description: "the user has no second factor that reaches the requested acr_values",
        },
    )
}

/// Redirects with a code for `user`, who signed in as `signed_in`. `factor_ids`: a new
/// sign-in to remember in the session cookie (the second factors it used), or `None`
/// when it came from the session.
async fn finish(
    state: &Arc<AppState>,
    posted: Posted,
    user: &User,
    signed_in: Authentication,
    factor_ids: Option<Vec<String>>,
) -> Response {
    if !state.login_forms.approve_once(&posted.form, clock::now()) {
        return pages::error(StatusCode::BAD_REQUEST, EXPIRED_FORM);
    }
    let authorization = posted.form.authorization;
    let code = {
        let state = Arc::clone(state);
        let authorization = authorization.clone();
        let signed_in = signed_in.clone();
        // What was asked for, of what the user may hold.
        let granted = authorization.scopes.intersection(&user.scopes);
        let user_id = user.user_id.clone();
        blocking(move || {
            let new = NewCode {
                client_id: &authorization.client_id,
                user_id: &user_id,
                redirect_uri: &authorization.redirect_uri,
                scopes: &granted,
                code_challenge: authorization.code_challenge.as_deref(),
                dpop_jkt: authorization.dpop_jkt.as_deref(),
            };
            state
                .db
                .transaction(|tx| {
                    let code = codes::issue(tx, &new, clock::now())?;
                    authentication::record_for_code(tx, &code, &signed_in)?;
                    Ok(code)
                })
                .map_err(|err| OAuthError::internal("storing an authorization code", err))
        })
        .await
    };
    let Ok(code) = code else {
        return internal_error();
    };
    let mut params = vec![("code", code.as_str())];
    if let Some(client_state) = &authorization.state {
        params.push(("state", client_state));
    }
    params.push(("iss", &state.config.issuer));
    let mut response = see_other(&redirect_uri::with_params(
        &authorization.redirect_uri,
        &params,
    ));
    if let Some(factor_ids) = factor_ids {
        signin::audit(
            "sign_in.completed",
            json!({
                "user_id": user.user_id,
                "client_id": authorization.client_id,
                "acr": signed_in.acr(),
                "amr": signed_in.amr(),
            }),
        );
        response.headers_mut().insert(
            header::SET_COOKIE,
            signin::session_cookie(state, user, &signed_in, factor_ids),
        );
    }
    response
}

async fn find_user(state: &Arc<AppState>, username: &str) -> Result<Option<User>, OAuthError> {
    signin::find_user(state, username).await
}

fn too_many(blocked: &Blocked) -> String {
    format!(
        "Too many failed attempts. Try again in {} seconds.",
        blocked.retry_after_secs()
    )
}

fn internal_error() -> Response {
    pages::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong on our side.",
    )
}

/// The sign-in and consent page for the pending request: with an error, or as the
/// session's user (`signed_in_as`: no credentials asked).
fn login_page(
    state: &AppState,
    posted: &Posted,
    username: &str,
    error: Option<&str>,
    signed_in_as: Option<(&str, &str)>,
) -> Response {
    let authorization = &posted.form.authorization;
    let page = LoginPage {
        action: &state.config.endpoint("/authorize"),
        request: Some(&posted.value),
        client: Some((&authorization.client_id, &authorization.scopes)),
        username,
        error,
        signed_in_as,
        passkeys: state.passkeys.enabled(),
    };
    pages::login(StatusCode::OK, &page)
}

fn refuse(state: &AppState, refusal: Refusal) -> Response {
    match refusal {
        Refusal::Page(message) => pages::error(StatusCode::BAD_REQUEST, message),
        Refusal::Redirect {
            redirect_uri,
            state: client_state,
            error,
            description,
        } => {
            let mut params = vec![("error", error), ("error_description", description)];
            if let Some(client_state) = &client_state {
                params.push(("state", client_state));
            }
            params.push(("iss", &state.config.issuer));
            see_other(&redirect_uri::with_params(&redirect_uri, &params))
        }
    }
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => {
            let mut response = (StatusCode::SEE_OTHER, no_store_headers()).into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        // Redirect URIs are registered as printable ASCII and parameters are
        // percent-encoded, so this cannot happen.
        Err(err) => {
            eprintln!("error: redirect location is not a header value: {err}");
            pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side.",
            )
        }
    }
}

/// Names the (registered) client in the access log.
fn with_client(mut response: Response, client_id: &str) -> Response {
    response.extensions_mut().insert(LogContext {
        client_id: client_id.to_owned(),
        token_id: None,
    });
    response
}

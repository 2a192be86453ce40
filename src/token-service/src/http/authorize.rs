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
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::form::{self, Form};
use super::pages::{self, LoginPage};
use super::{blocking, client_ip, AppState, LogContext};
use crate::protocol::codes::{self, NewCode};
use crate::protocol::dpop;
use crate::protocol::errors::{no_store_headers, OAuthError};
use crate::protocol::pending::{PendingAuthorization, SignedForm};
use crate::protocol::scope::ScopeSet;
use crate::protocol::{pkce, redirect_uri};
use crate::server::clock;
use crate::server::throttle::Account;
use crate::storage::clients::{self, ClientType};
use crate::storage::users::{self, User};

/// Longest `state` carried through; clients commonly use a random value or a short JWT.
const MAX_STATE_LEN: usize = 2048;
const FIELDS: &[&str] = &["request", "username", "password", "decision"];
const INCORRECT_LOGIN: &str = "The username or password is incorrect.";
const EXPIRED_FORM: &str = "This sign-in form has expired or was already used.";

/// A login form posted back: its sealed value (shown again on a retry) and what it
/// holds.
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

pub async fn start(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
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
    let authorization = match validated {
        Ok(Ok(authorization)) => authorization,
        Ok(Err(refusal)) => return refuse(&state, refusal),
        Err(_) => {
            return pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side.",
            )
        }
    };
    let request = state.login_forms.seal(authorization.clone(), clock::now());
    let page = LoginPage {
        action: &state.config.endpoint("/authorize"),
        request: &request,
        client_id: &authorization.client_id,
        scopes: &authorization.scopes,
        username: "",
        error: None,
    };
    with_client(
        pages::login(StatusCode::OK, &page),
        &authorization.client_id,
    )
}

pub async fn decide(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let ip = client_ip(&state, peer, request.headers());
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
    let response = match form.get("decision") {
        Some("approve") => approve(&state, posted, &form, ip).await,
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
        _ => pages::error(StatusCode::BAD_REQUEST, "Choose Approve or Deny."),
    };
    with_client(response, &client_id)
}

/// Checks the request in the order RFC 6749 §4.1.2.1 requires.
fn validate(
    conn: &rusqlite::Connection,
    query: &str,
) -> rusqlite::Result<Result<PendingAuthorization, Refusal>> {
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
    Ok(Ok(PendingAuthorization {
        client_id: client.client_id,
        redirect_uri: requested_uri.to_owned(),
        scopes,
        state: state.map(str::to_owned),
        code_challenge,
        dpop_jkt: dpop_jkt.map(str::to_owned),
    }))
}

/// Verifies the user's credentials and, if they hold, redirects with a code.
async fn approve(state: &Arc<AppState>, posted: Posted, form: &Form, ip: IpAddr) -> Response {
    let username = form.get("username").unwrap_or_default().to_owned();
    let Some(password) = form.get("password").map(str::to_owned) else {
        return retry(
            state,
            &posted,
            &username,
            "Enter your username and password.",
            StatusCode::OK,
        );
    };
    if username.is_empty() {
        return retry(
            state,
            &posted,
            &username,
            "Enter your username and password.",
            StatusCode::OK,
        );
    }
    let attempt = match state.throttle.begin(Account::User(&username), ip).await {
        Ok(attempt) => attempt,
        Err(blocked) => {
            let seconds = blocked.retry_after_secs();
            let message =
                format!("Too many failed sign-in attempts. Try again in {seconds} seconds.");
            let mut response = retry(
                state,
                &posted,
                &username,
                &message,
                StatusCode::TOO_MANY_REQUESTS,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
    };
    if !attempt.delay().is_zero() {
        tokio::time::sleep(attempt.delay()).await;
    }
    let user = match verify_user(state, &username, password).await {
        Ok(user) => user,
        Err(_) => {
            return pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side.",
            )
        }
    };
    let Some(user) = user else {
        attempt.failed();
        return retry(state, &posted, &username, INCORRECT_LOGIN, StatusCode::OK);
    };
    attempt.succeeded();
    if !state.login_forms.approve_once(&posted.form, clock::now()) {
        return pages::error(StatusCode::BAD_REQUEST, EXPIRED_FORM);
    }

    let authorization = posted.form.authorization;
    let code = {
        let state = Arc::clone(state);
        let authorization = authorization.clone();
        // What was asked for, of what the user may hold.
        let granted = authorization.scopes.intersection(&user.scopes);
        blocking(move || {
            let new = NewCode {
                client_id: &authorization.client_id,
                user_id: &user.user_id,
                redirect_uri: &authorization.redirect_uri,
                scopes: &granted,
                code_challenge: authorization.code_challenge.as_deref(),
                dpop_jkt: authorization.dpop_jkt.as_deref(),
            };
            state
                .db
                .with(|conn| codes::issue(conn, &new, clock::now()))
                .map_err(|err| OAuthError::internal("storing an authorization code", err))
        })
        .await
    };
    let Ok(code) = code else {
        return pages::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong on our side.",
        );
    };
    let mut params = vec![("code", code.as_str())];
    if let Some(client_state) = &authorization.state {
        params.push(("state", client_state));
    }
    params.push(("iss", &state.config.issuer));
    see_other(&redirect_uri::with_params(
        &authorization.redirect_uri,
        &params,
    ))
}

/// The user, if the password is theirs. Unknown users cost the same Argon2
/// verification as known ones.
async fn verify_user(
    state: &Arc<AppState>,
    username: &str,
    password: String,
) -> Result<Option<User>, OAuthError> {
    let user = {
        let state = Arc::clone(state);
        let username = username.to_owned();
        blocking(move || {
            state
                .db
                .with(|conn| users::find_by_username(conn, &username))
                .map_err(|err| OAuthError::internal("looking up user", err))
        })
        .await?
    };
    let hash = user.as_ref().map(|user| user.password_hash.clone());
    let valid = state
        .secrets
        .verify(password, hash)
        .await
        .map_err(|err| OAuthError::internal("verifying a password", err))?;
    Ok(user.filter(|_| valid))
}

/// The login page again, with an error, for the same pending request.
fn retry(
    state: &AppState,
    posted: &Posted,
    username: &str,
    error: &str,
    status: StatusCode,
) -> Response {
    let authorization = &posted.form.authorization;
    let page = LoginPage {
        action: &state.config.endpoint("/authorize"),
        request: &posted.value,
        client_id: &authorization.client_id,
        scopes: &authorization.scopes,
        username,
        error: Some(error),
    };
    pages::login(status, &page)
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

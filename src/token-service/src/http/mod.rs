//! The HTTP surface: routes, shared state, and the one-line-per-request access log.
//!
//! Handlers never hold the database or run Argon2/signing on the async executor: that
//! work goes to blocking threads through [`blocking`].

mod account;
mod admin;
mod api_keys_feed;
mod authorize;
mod client_auth;
mod conditional;
mod discovery;
pub mod form;
mod introspect;
mod pages;
mod revocations;
mod revoke;
pub mod signin;
mod token;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::crypto::sealed::Sealer;
use crate::crypto::secrets;
use crate::protocol::access_token::{self, VerifiedToken};
use crate::protocol::dpop;
use crate::protocol::errors::OAuthError;
use crate::protocol::mtls::{self, ClientCertificate};
use crate::protocol::pending::LoginForms;
use crate::server::config::ServeConfig;
use crate::server::metrics::METRICS;
use crate::server::throttle::Throttle;
use crate::server::{audit, clock};
use crate::storage::api_key_hashing::KeyHasher;
use crate::storage::db::Database;
use crate::storage::keystore::KeyCache;
use crate::storage::revocation;
use signin::Passkeys;

/// State shared by all handlers.
pub struct AppState {
    pub config: ServeConfig,
    pub db: Database,
    pub keys: KeyCache,
    /// Checks client secrets and passwords: a few at a time, in reused memory.
    pub secrets: secrets::Verifier,
    /// Failed client and user authentications.
    pub throttle: Throttle,
    /// Seals and opens the login forms of pending authorization requests.
    pub login_forms: LoginForms,
    /// How new API keys are digested.
    pub api_key_hasher: KeyHasher,
    /// Seals the session cookie and sign-in progress between factors.
    pub sessions: Sealer,
    /// WebAuthn for the issuer's origin, and the ceremonies in flight.
    pub passkeys: Passkeys,
    /// DPoP server nonces, when `--dpop-nonce` asks for them.
    pub dpop_nonces: Option<dpop::Nonces>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let form_limit = || DefaultBodyLimit::max(form::MAX_BODY_BYTES);
    Router::new()
        .route("/token", post(token::token).layer(form_limit()))
        .route(
            "/authorize",
            get(authorize::start)
                .post(authorize::decide)
                .layer(form_limit()),
        )
        .route("/account", get(account::show))
        .route(
            "/account/sign-in",
            post(account::sign_in).layer(form_limit()),
        )
        .route(
            "/account/sign-out",
            post(account::sign_out).layer(form_limit()),
        )
        .route("/account/totp/new", get(account::new_totp))
        .route("/account/totp", post(account::add_totp).layer(form_limit()))
        .route("/account/passkeys/new", get(account::new_passkey))
        .route(
            "/account/passkeys",
            post(account::add_passkey).layer(form_limit()),
        )
        .route(
            "/account/factors/remove",
            post(account::remove_factor).layer(form_limit()),
        )
        .route(pages::PASSKEY_SCRIPT_PATH, get(account::passkey_script))
        .route("/revoke", post(revoke::revoke).layer(form_limit()))
        .route(
            "/introspect",
            post(introspect::introspect).layer(form_limit()),
        )
        .route("/revocations", get(revocations::feed))
        .route("/api-keys", get(api_keys_feed::feed))
        .route(
            "/admin/consumers",
            get(admin::list_consumers)
                .post(admin::add_consumer)
                .layer(form_limit()),
        )
        .route("/admin/consumers/{id}", delete(admin::remove_consumer))
        .route(
            "/admin/api-keys",
            get(admin::list_keys)
                .post(admin::create_key)
                .layer(form_limit()),
        )
        .route(
            "/admin/api-keys/{id}",
            get(admin::show_key).delete(admin::delete_key),
        )
        .route(
            "/admin/users/{username}/factors",
            get(admin::list_user_factors).delete(admin::reset_user_factors),
        )
        .route("/admin/api-keys/{id}/disable", post(admin::disable_key))
        .route("/admin/api-keys/{id}/enable", post(admin::enable_key))
        .route(
            "/admin/api-keys/{id}/rotate",
            post(admin::rotate_key).layer(form_limit()),
        )
        .route("/.well-known/jwks.json", get(discovery::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(discovery::metadata),
        )
        .route("/healthz", get(discovery::healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { OAuthError::not_found() })
        .method_not_allowed_fallback(|| async { OAuthError::method_not_allowed() })
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// Who a request was for, attached to responses for the access log. Only set once the
/// client has authenticated, so the log never repeats unverified input.
#[derive(Clone)]
struct LogContext {
    client_id: String,
    /// `jti` of the issued token: identifies it without revealing it.
    token_id: Option<String>,
}

/// One line per request on stderr. Logs the path without the query string and never a
/// header or body, so credentials and tokens cannot end up in the log. Also gives the
/// request its id (a proxy's `x-request-id`, or a new one, echoed in the response) for
/// its audit events, and counts it for the metrics.
async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let endpoint = endpoint(&request);
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .and_then(audit::accepted_request_id)
        .map_or_else(audit::new_request_id, str::to_owned);
    let context = audit::Context {
        request_id: request_id.clone(),
        source: "http",
        actor: None,
    };
    let mut response = audit::in_request(context, next.run(request)).await;
    METRICS.request(endpoint, response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let mut line = format!(
        "{} {method} {path} {} {}ms request_id={request_id}",
        clock::rfc3339(clock::now()),
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    if let Some(context) = response.extensions().get::<LogContext>() {
        line.push_str(" client_id=");
        line.push_str(&context.client_id);
        if let Some(token_id) = &context.token_id {
            line.push_str(" jti=");
            line.push_str(token_id);
        }
    }
    eprintln!("{line}");
    response
}

/// The header a proxy (Envoy) names requests with.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route template a request matched, from this router's own routes (so the
/// metrics' label values are a closed set), or `other`.
fn endpoint(request: &Request) -> &'static str {
    const ENDPOINTS: &[&str] = &[
        "/token",
        "/authorize",
        "/revoke",
        "/introspect",
        "/revocations",
        "/api-keys",
        "/admin/consumers",
        "/admin/consumers/{id}",
        "/admin/api-keys",
        "/admin/api-keys/{id}",
        "/admin/api-keys/{id}/disable",
        "/admin/api-keys/{id}/enable",
        "/admin/api-keys/{id}/rotate",
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/healthz",
        "/metrics",
    ];
    request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|matched| ENDPOINTS.iter().find(|known| **known == matched.as_str()))
        .copied()
        .unwrap_or("other")
}

/// `GET /metrics`: the Prometheus text format. Not routed by the sample Envoy: scrape
/// the service's own listener.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = METRICS.render(state.secrets.queue_depth());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// The address a request came from, through trusted proxies (see [`crate::server::client_ip`]).
fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    state.config.trusted_proxies.client_ip(peer.ip(), headers)
}

/// The client certificate of the connection, as a trusted proxy forwarded it in
/// `x-forwarded-client-cert` (see [`crate::protocol::mtls`]). From any other peer the
/// header is ignored. A repeated header is refused outright, never half-read.
fn client_certificate(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Option<ClientCertificate>, OAuthError> {
    if !state
        .config
        .trusted_proxies
        .contains(peer.ip().to_canonical())
    {
        return Ok(None);
    }
    let mut values = headers.get_all(mtls::XFCC).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(mtls::XFCC) {
            Err(OAuthError::invalid_request(
                "x-forwarded-client-cert is repeated",
            ))
        } else {
            Ok(None)
        };
    };
    value
        .to_str()
        .ok()
        .and_then(ClientCertificate::from_xfcc)
        .map(Some)
        .ok_or_else(|| OAuthError::invalid_request("x-forwarded-client-cert is malformed"))
}

/// The claims of `token` if it is an access token of this service that has neither
/// expired nor been revoked at `now`.
fn active_access_token(
    state: &AppState,
    conn: &rusqlite::Connection,
    token: &str,
    now: i64,
) -> anyhow::Result<Option<VerifiedToken>> {
    let keys = state.keys.current(conn, now)?;
    let Some(verified) = access_token::verify(&keys, token, &state.config.issuer, now) else {
        return Ok(None);
    };
    Ok((!revocation::is_revoked(conn, &verified.jti)?).then_some(verified))
}

/// Runs `work` on a blocking thread, in the request's audit context.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OAuthError> + Send + 'static,
) -> Result<T, OAuthError> {
    let context = audit::current();
    tokio::task::spawn_blocking(move || audit::on_this_thread(context, work))
        .await
        .unwrap_or_else(|err| Err(OAuthError::internal("blocking task failed", err)))
}

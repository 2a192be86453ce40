//! `POST /token` (RFC 6749 §3.2): the `authorization_code`, `refresh_token` and
//! `client_credentials` grants.
//!
//! Cheap checks come first (content type, body size and encoding, grant type and its
//! parameters, the DPoP proof) so that malformed requests never cost an Argon2
//! verification. Client authentication then goes through the throttle and costs at
//! most one verification.
//!
//! Sender constraints: a `DPoP` proof (RFC 9449 §5) makes the tokens DPoP tokens
//! (`token_type: DPoP`, `cnf.jkt`); a client that authenticated with its certificate
//! (RFC 8705) gets tokens bound to it (`cnf.x5t#S256`). The proof's `jti` is recorded in
//! the grant's transaction, so a replayed proof gets nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::client_auth::{self, Accepts};
use super::form::{self, Form};
use super::{blocking, client_certificate, client_ip, AppState, LogContext};
use crate::protocol::access_token::Confirmation;
use crate::protocol::dpop::{self, Proof, ProofRules};
use crate::protocol::errors::{no_store_headers, OAuthError};
use crate::protocol::grants::{self, CodeRequest, Context, Issued, RefreshRequest};
use crate::protocol::scope::ScopeSet;
use crate::server::metrics::METRICS;
use crate::server::{audit, clock};
use crate::storage::clients::Client;

/// Parameters a duplicate error may name; other names are not echoed back.
const KNOWN_PARAMETERS: &[&str] = &[
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
];

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    /// Always present: the granted scope may differ from the requested one (RFC 6749
    /// §5.1), e.g. narrowed to what the user may hold; empty when none is granted.
    scope: String,
}

/// A parsed grant request.
enum GrantRequest {
    ClientCredentials(Option<ScopeSet>),
    AuthorizationCode(CodeRequest),
    RefreshToken(RefreshRequest),
}

/// Answers a token request with tokens or an RFC 6749 §5.2 error, and tells the access
/// log which client it was for once that client has authenticated.
pub async fn token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let ip = client_ip(&state, peer, request.headers());
    let headers = request.headers().clone();
    let method = request.method().clone();
    let parsed = async {
        let form = form::read(request, KNOWN_PARAMETERS).await?;
        let grant = parse_grant(&form)?;
        let proof = dpop_proof(&state, &method, &headers)?;
        let certificate = client_certificate(&state, peer, &headers)?;
        let credentials = client_auth::extract(&headers, &form)?.with_certificate(certificate);
        Ok::<_, OAuthError>((grant, proof, credentials))
    };
    let (grant, proof, credentials) = match parsed.await {
        Ok(parsed) => parsed,
        Err(err) => return refused(None, None, ip, err),
    };
    let grant_type = grant.grant_type();
    let claimed_client_id = credentials.client_id.clone();
    let authenticated =
        match client_auth::authenticate_with_method(&state, credentials, ip, Accepts::AnyClient)
            .await
        {
            Ok(authenticated) => authenticated,
            Err(err) => return refused(Some(&claimed_client_id), Some(grant_type), ip, err),
        };
    let client = authenticated.client;
    let confirmation = Confirmation {
        jkt: proof.as_ref().map(|proof| proof.jkt.clone()),
        x5t_s256: authenticated
            .certificate
            .as_ref()
            .map(|certificate| certificate.thumbprint()),
    };
    let token_type = if confirmation.jkt.is_some() {
        "DPoP"
    } else {
        "Bearer"
    };
    let (mut response, token_id) = match issue(&state, &client, grant, proof, confirmation).await {
        Ok(issued) => {
            METRICS.token_issued(grant_type);
            let event = if grant_type == REFRESH_TOKEN {
                "token.refreshed"
            } else {
                "token.issued"
            };
            audit::Event::new(event)
                .field("client_id", &client.client_id)
                .field("client_address", ip)
                .field("grant_type", grant_type)
                .field("token_type", token_type)
                .field("jti", &issued.access_token.jti)
                .field("scope", issued.scopes.to_string())
                .field("refresh_token_issued", issued.refresh_token.is_some())
                .emit();
            let body = TokenResponse {
                access_token: &issued.access_token.jwt,
                token_type,
                expires_in: state.config.access_token_ttl,
                refresh_token: issued.refresh_token.as_deref(),
                scope: issued.scopes.to_string(),
            };
            let response = (StatusCode::OK, no_store_headers(), Json(body)).into_response();
            (response, Some(issued.access_token.jti))
        }
        Err(err) => (
            refused(Some(&client.client_id), Some(grant_type), ip, err),
            None,
        ),
    };
    response.extensions_mut().insert(LogContext {
        client_id: client.client_id,
        token_id,
    });
    response
}

/// A refused token request: its audit event, then its error response. `client_id` is
/// the one the request claims, authenticated or not.
fn refused(
    client_id: Option<&str>,
    grant_type: Option<&'static str>,
    ip: IpAddr,
    err: OAuthError,
) -> Response {
    audit::Event::new("token.refused")
        .field("client_id", client_id)
        .field("client_address", ip)
        .field("grant_type", grant_type)
        .field("error", err.code().as_str())
        .field("error_description", err.description())
        .emit();
    err.into_response()
}

const REFRESH_TOKEN: &str = "refresh_token";

impl GrantRequest {
    fn grant_type(&self) -> &'static str {
        match self {
            GrantRequest::ClientCredentials(_) => "client_credentials",
            GrantRequest::AuthorizationCode(_) => "authorization_code",
            GrantRequest::RefreshToken(_) => REFRESH_TOKEN,
        }
    }
}

fn parse_grant(form: &Form) -> Result<GrantRequest, OAuthError> {
    let required = |name: &'static str| {
        form.get(name)
            .map(str::to_owned)
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is missing")))
    };
    let scope = || {
        form.get("scope")
            .map(str::parse::<ScopeSet>)
            .transpose()
            .map_err(|err| OAuthError::invalid_scope(err.to_string()))
    };
    match form.get("grant_type") {
        None => Err(OAuthError::invalid_request("grant_type is missing")),
        Some("client_credentials") => Ok(GrantRequest::ClientCredentials(scope()?)),
        Some("authorization_code") => Ok(GrantRequest::AuthorizationCode(CodeRequest {
            code: required("code")?,
            redirect_uri: required("redirect_uri")?,
            code_verifier: form.get("code_verifier").map(str::to_owned),
        })),
        Some("refresh_token") => Ok(GrantRequest::RefreshToken(RefreshRequest {
            refresh_token: required("refresh_token")?,
            scope: scope()?,
        })),
        Some(_) => Err(OAuthError::unsupported_grant_type()),
    }
}

/// The request's DPoP proof, checked (RFC 9449 §4.3) but not yet recorded as used.
/// The header may appear once at most (§4.3 point 1).
fn dpop_proof(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<Proof>, OAuthError> {
    let mut values = headers.get_all(DPOP).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OAuthError::invalid_dpop_proof(
            "the DPoP header is repeated",
        ));
    }
    let proof = value
        .to_str()
        .map_err(|_| OAuthError::invalid_dpop_proof("the DPoP header is not a JWS"))?;
    let token_endpoints = state.config.token_endpoint_urls();
    let rules = ProofRules {
        token_endpoints: &token_endpoints,
        max_age_secs: state.config.dpop_proof_max_age(),
        nonces: state.dpop_nonces.as_ref(),
    };
    dpop::verify(proof, method.as_str(), &rules, clock::now()).map(Some)
}

/// The DPoP proof header (RFC 9449 §4.1).
const DPOP: &str = "dpop";

/// Runs the grant in one transaction, committed even when refused (a refusal may have
/// revoked a family). The proof's `jti` is spent first: a replay gets nothing.
async fn issue(
    state: &Arc<AppState>,
    client: &Client,
    grant: GrantRequest,
    proof: Option<Proof>,
    confirmation: Confirmation,
) -> Result<Issued, OAuthError> {
    let state = Arc::clone(state);
    let client = client.clone();
    blocking(move || {
        let now = clock::now();
        let run = |conn: &rusqlite::Connection| {
            if let Some(proof) = &proof {
                if !dpop::record_use(conn, proof, state.config.dpop_proof_max_age(), now)? {
                    return Ok(Err(OAuthError::invalid_dpop_proof(
                        "the DPoP proof was already used (jti)",
                    )));
                }
            }
            let keys = state.keys.current(conn, now)?;
            let context = Context {
                config: &state.config,
                keys: &keys,
                now,
                confirmation: &confirmation,
            };
            match &grant {
                GrantRequest::ClientCredentials(scopes) => {
                    grants::client_credentials(conn, &context, &client, scopes.clone())
                }
                GrantRequest::AuthorizationCode(request) => {
                    grants::authorization_code(conn, &context, &client, request)
                }
                GrantRequest::RefreshToken(request) => {
                    grants::refresh_token(conn, &context, &client, request)
                }
            }
        };
        let outcome = state.db.transaction(|tx| run(tx));
        outcome.unwrap_or_else(|err| Err(OAuthError::internal("issuing tokens", err)))
    })
    .await
}

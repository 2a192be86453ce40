//! Client authentication at `/token`, `/revoke` and `/introspect`:
//! `client_secret_basic` or `client_secret_post` (RFC 6749 §2.3.1) for confidential
//! clients, the client id alone (`none`) for public ones, and the client id with a
//! client certificate (`tls_client_auth`, `self_signed_tls_client_auth`, RFC 8705 §2)
//! for clients registered with one.
//!
//! Every secret check costs one Argon2 verification, known client or not, and goes
//! through the brute-force throttle first: a blocked caller gets 429 without any
//! hashing.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::form::{decode_component, Form};
use super::{blocking, AppState};
use crate::protocol::errors::OAuthError;
use crate::protocol::mtls::ClientCertificate;
use crate::server::audit;
use crate::server::metrics::Throttled;
use crate::server::throttle::Account;
use crate::storage::client_tls;
use crate::storage::clients::{self, Client, ClientType};

/// Credentials presented by the client. Deliberately not `Debug`: it holds a secret.
pub struct ClientCredentials {
    pub client_id: String,
    /// `None`: the client id alone, as a public client sends it.
    client_secret: Option<String>,
    /// The connection's client certificate, as a trusted proxy forwarded it.
    certificate: Option<ClientCertificate>,
}

impl ClientCredentials {
    pub fn with_certificate(mut self, certificate: Option<ClientCertificate>) -> Self {
        self.certificate = certificate;
        self
    }
}

/// An authenticated client, and the certificate it authenticated with, if it did.
pub struct Authenticated {
    pub client: Client,
    pub certificate: Option<ClientCertificate>,
}

/// Which kinds of client an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    AnyClient,
    /// Introspection: only clients that can prove who they are.
    ConfidentialOnly,
}

/// The registered client the credentials prove, after the throttle allowed the
/// attempt. Failures count against the client id at `ip` and against `ip`.
pub async fn authenticate(
    state: &Arc<AppState>,
    credentials: ClientCredentials,
    ip: IpAddr,
    accepts: Accepts,
) -> Result<Client, OAuthError> {
    authenticate_with_method(state, credentials, ip, accepts)
        .await
        .map(|authenticated| authenticated.client)
}

/// [`authenticate`], telling whether the client proved itself with its certificate.
pub async fn authenticate_with_method(
    state: &Arc<AppState>,
    credentials: ClientCredentials,
    ip: IpAddr,
    accepts: Accepts,
) -> Result<Authenticated, OAuthError> {
    let client_id = credentials.client_id.clone();
    let attempt = state
        .throttle
        .begin(Account::Client(&client_id), ip)
        .await
        .map_err(|blocked| {
            audit::throttled(Throttled::Client, &client_id, ip, &blocked);
            OAuthError::too_many_requests(blocked.retry_after_secs())
        })?;
    if !attempt.delay().is_zero() {
        tokio::time::sleep(attempt.delay()).await;
    }
    match verify(state, credentials, accepts).await? {
        Some(authenticated) => {
            attempt.succeeded();
            Ok(authenticated)
        }
        None => {
            attempt.failed();
            audit::Event::new("client.authentication_failed")
                .field("client_id", &client_id)
                .field("client_address", ip)
                .emit();
            Err(OAuthError::invalid_client())
        }
    }
}

/// The client, if the credentials prove it. Unknown clients, and public clients that
/// send a secret, are checked against a dummy hash: same work, same answer as a wrong
/// secret. A client registered with a certificate authenticates with it only.
async fn verify(
    state: &Arc<AppState>,
    credentials: ClientCredentials,
    accepts: Accepts,
) -> Result<Option<Authenticated>, OAuthError> {
    let (client, tls_auth) = {
        let state = Arc::clone(state);
        let client_id = credentials.client_id.clone();
        blocking(move || {
            state
                .db
                .with(|conn| {
                    let client = clients::find(conn, &client_id)?;
                    let tls_auth = match &client {
                        Some(_) => client_tls::find(conn, &client_id)?,
                        None => None,
                    };
                    Ok::<_, rusqlite::Error>((client, tls_auth))
                })
                .map_err(|err| OAuthError::internal("looking up client", err))
        })
        .await?
    };
    if let (Some(tls_auth), None) = (&tls_auth, &credentials.client_secret) {
        let proven = credentials
            .certificate
            .filter(|certificate| tls_auth.matches(certificate));
        return Ok(client
            .zip(proven)
            .map(|(client, certificate)| Authenticated {
                client,
                certificate: Some(certificate),
            }));
    }
    let client = match credentials.client_secret {
        Some(secret) => {
            let hash = client
                .as_ref()
                .filter(|client| client.client_type == ClientType::Confidential)
                .and_then(|client| client.secret_hash.clone());
            let valid = state
                .secrets
                .verify(secret, hash)
                .await
                .map_err(|err| OAuthError::internal("verifying a client secret", err))?;
            client.filter(|_| valid)
        }
        None => client.filter(|client| {
            client.client_type == ClientType::Public && accepts == Accepts::AnyClient
        }),
    };
    Ok(client.map(|client| Authenticated {
        client,
        certificate: None,
    }))
}

/// Extracts the client credentials from the `Authorization` header or the form.
///
/// RFC 6749 §2.3: a client must not use more than one authentication method in a
/// request, so a Basic header together with a `client_secret` field is rejected.
pub fn extract(headers: &HeaderMap, form: &Form) -> Result<ClientCredentials, OAuthError> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = authorization.next() else {
        return from_form(form);
    };
    if authorization.next().is_some() {
        return Err(OAuthError::invalid_request(
            "the Authorization header is repeated",
        ));
    }
    if form.get("client_secret").is_some() {
        return Err(OAuthError::invalid_request(
            "use either HTTP Basic or client_secret in the body, not both",
        ));
    }
    let credentials = parse_basic(value.as_bytes()).ok_or_else(OAuthError::invalid_client)?;
    if form
        .get("client_id")
        .is_some_and(|client_id| client_id != credentials.client_id)
    {
        return Err(OAuthError::invalid_request(
            "client_id in the body differs from the HTTP Basic client id",
        ));
    }
    Ok(credentials)
}

fn from_form(form: &Form) -> Result<ClientCredentials, OAuthError> {
    match (form.get("client_id"), form.get("client_secret")) {
        (Some(client_id), client_secret) => Ok(ClientCredentials {
            client_id: client_id.to_owned(),
            client_secret: client_secret.map(str::to_owned),
            certificate: None,
        }),
        (None, _) => Err(OAuthError::invalid_client()),
    }
}

/// `Basic base64(urlencode(client_id) ":" urlencode(client_secret))`; the scheme name is
/// case-insensitive (RFC 9110 §11.1).
fn parse_basic(value: &[u8]) -> Option<ClientCredentials> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim_start()).ok()?;
    let colon = decoded.iter().position(|&byte| byte == b':')?;
    let client_id = decode_component(&decoded[..colon]).ok()?;
    let client_secret = decode_component(&decoded[colon + 1..]).ok()?;
    if client_id.is_empty() || client_secret.is_empty() {
        return None;
    }
    Some(ClientCredentials {
        client_id,
        client_secret: Some(client_secret),
        certificate: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::errors::ErrorCode;
    use axum::http::HeaderValue;

    fn basic(raw: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(raw));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).expect("header"),
        );
        headers
    }

    fn form(body: &str) -> Form {
        Form::parse(body.as_bytes()).expect("form")
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let credentials =
            extract(&basic("svc%3Abilling:s3cr%2Bt+x"), &form("")).expect("credentials");
        assert_eq!(credentials.client_id, "svc:billing");
        assert_eq!(credentials.client_secret.as_deref(), Some("s3cr+t x"));
    }

    #[test]
    fn post_credentials() {
        let credentials =
            extract(&HeaderMap::new(), &form("client_id=app&client_secret=pw")).expect("post");
        assert_eq!(credentials.client_id, "app");
        assert_eq!(credentials.client_secret.as_deref(), Some("pw"));
    }

    #[test]
    fn a_client_id_alone_is_a_public_client() {
        let credentials = extract(&HeaderMap::new(), &form("client_id=spa")).expect("none");
        assert_eq!(credentials.client_id, "spa");
        assert!(credentials.client_secret.is_none());
    }

    #[test]
    fn both_methods_at_once_is_invalid_request() {
        let err = extract(&basic("app:pw"), &form("client_secret=pw"))
            .err()
            .expect("rejected");
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
    }

    #[test]
    fn missing_or_malformed_credentials_are_invalid_client() {
        for (headers, body) in [
            (HeaderMap::new(), ""),
            (HeaderMap::new(), "client_secret=pw"),
            (basic("no-colon"), ""),
            (basic(":pw"), ""),
            (basic("app:%zz"), ""),
        ] {
            let err = extract(&headers, &form(body)).err().expect("rejected");
            assert_eq!(err.code(), ErrorCode::InvalidClient, "{body}");
        }
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        let err = extract(&bearer, &form("")).err().expect("rejected");
        assert_eq!(err.code(), ErrorCode::InvalidClient);
    }
}

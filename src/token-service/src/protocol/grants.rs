//! The grants of the token endpoint: from an authenticated client and its request to
//! tokens, or to an RFC 6749 §5.2 refusal.
//!
//! - `client_credentials` (§4.4): a token for the client itself; confidential clients
//!   only.
//! - `authorization_code` (§4.1.3, RFC 7636): redeems a code once, checking client,
//!   expiry, redirect URI and PKCE; starts a refresh-token family. A code presented
//!   again revokes that family.
//! - `refresh_token` (§6, RFC 9700 §4.14): rotates the token; the scope may narrow,
//!   never widen. A rotated token presented again revokes its family, unless it is a
//!   retry within the grace window (see [`refresh`]), which gets new tokens.
//!
//! Sender constraints (RFC 9449, RFC 8705): the access token is bound (`cnf`) to the
//! request's verified DPoP key and to the certificate the client authenticated with.
//! A code requested with `dpop_jkt` is redeemed only with that key, and a public
//! client's grant started with a DPoP key is refreshed only with it. A proof that is
//! valid but of another key is `invalid_grant` (the grant is not this key's); a
//! missing proof where one is needed is `invalid_dpop_proof`.
//!
//! The database functions run inside one transaction that is committed even when the
//! request is refused, because a refusal may have revoked a family.

use anyhow::Context as _;
use rusqlite::Connection;

use crate::protocol::access_token::{self, Confirmation, Grant, IssuedToken};
use crate::protocol::authentication::{self, Authentication};
use crate::protocol::errors::OAuthError;
use crate::protocol::scope::ScopeSet;
use crate::protocol::{codes, pkce, refresh};
use crate::server::audit;
use crate::server::config::ServeConfig;
use crate::server::metrics::METRICS;
use crate::storage::clients::{Client, ClientType};
use crate::storage::keystore::KeySet;
use crate::storage::{issued_tokens, users};

/// What the token endpoint hands out.
pub struct Issued {
    pub access_token: IssuedToken,
    /// Only for grants made by a user (authorization code and refresh).
    pub refresh_token: Option<String>,
    pub scopes: ScopeSet,
}

/// Settings, keys and time shared by every grant.
pub struct Context<'a> {
    pub config: &'a ServeConfig,
    pub keys: &'a KeySet,
    pub now: i64,
    /// What the request's tokens are bound to.
    pub confirmation: &'a Confirmation,
}

/// `grant_type=authorization_code` parameters.
pub struct CodeRequest {
    pub code: String,
    pub redirect_uri: String,
    pub code_verifier: Option<String>,
}

/// `grant_type=refresh_token` parameters.
pub struct RefreshRequest {
    pub refresh_token: String,
    pub scope: Option<ScopeSet>,
}

/// A refusal to answer with, or an internal failure.
pub type Outcome = anyhow::Result<Result<Issued, OAuthError>>;

/// Signs a token for the requested scopes, or for the client's default scopes if it
/// requested none (RFC 6749 §3.3).
pub fn client_credentials(
    conn: &Connection,
    context: &Context<'_>,
    client: &Client,
    requested: Option<ScopeSet>,
) -> Outcome {
    if client.client_type == ClientType::Public {
        return Ok(Err(OAuthError::unauthorized_client(
            "public clients cannot use the client_credentials grant",
        )));
    }
    let scopes = match requested {
        None => client.default_scopes.intersection(&client.scopes),
        Some(requested) if requested.is_subset(&client.scopes) => requested,
        Some(_) => {
            return Ok(Err(OAuthError::invalid_scope(
                "the requested scope exceeds the scopes allowed for this client",
            )))
        }
    };
    let access_token = sign(context, &client.client_id, &client.client_id, &scopes, None)?;
    // Recorded, so that removing or disabling the client revokes it.
    issued_tokens::record(
        conn,
        &access_token.jti,
        &client.client_id,
        None,
        access_token.expires_at,
    )?;
    Ok(Ok(Issued {
        access_token,
        refresh_token: None,
        scopes,
    }))
}

pub fn authorization_code(
    conn: &Connection,
    context: &Context<'_>,
    client: &Client,
    request: &CodeRequest,
) -> Outcome {
    let now = context.now;
    let Some(stored) = codes::find(conn, &request.code)? else {
        return refuse("the authorization code is invalid");
    };
    if stored.client_id != client.client_id {
        return refuse("the authorization code was issued to another client");
    }
    if let Some(family_id) = stored.family_id {
        // RFC 6749 §4.1.2: a code used twice is compromised; so is what it produced.
        refresh::revoke_family(conn, family_id, now)?;
        METRICS.code_reused();
        audit::Event::new("authorization_code.reuse_detected")
            .field("client_id", &client.client_id)
            .field("grant_id", family_id)
            .field("code_fingerprint", audit::fingerprint(&request.code))
            .field("action", "grant_revoked")
            .emit();
        return refuse(
            "the authorization code was already used; the tokens issued from it are revoked",
        );
    }
    if stored.expires_at <= now {
        return refuse("the authorization code expired");
    }
    if stored.redirect_uri != request.redirect_uri {
        return refuse("redirect_uri differs from the one in the authorization request");
    }
    match (&stored.code_challenge, &request.code_verifier) {
        (Some(challenge), Some(verifier)) if pkce::verify(verifier, challenge) => {}
        (Some(_), Some(_)) => return refuse("code_verifier does not match the code_challenge"),
        (Some(_), None) => {
            return refuse(
                "code_verifier is required: the authorization request had a code_challenge",
            )
        }
        // Downgrade protection (RFC 9700 §2.1.1): a verifier without a challenge means
        // the authorization request was not the one this client sent.
        (None, Some(_)) => {
            return refuse(
                "code_verifier sent, but the authorization request had no code_challenge",
            )
        }
        (None, None) => {}
    }
    let presented_jkt = context.confirmation.jkt.as_deref();
    if let Some(bound) = stored.dpop_jkt.as_deref() {
        match presented_jkt {
            None => {
                return Ok(Err(OAuthError::invalid_dpop_proof(
                    "a DPoP proof is required: the authorization request named dpop_jkt",
                )))
            }
            Some(jkt) if jkt != bound => {
                return refuse("the DPoP proof's key is not the one dpop_jkt named")
            }
            Some(_) => {}
        }
    }

    let (family_id, refresh_token) = refresh::start_family(
        conn,
        &client.client_id,
        &stored.user_id,
        &stored.scopes,
        context.config.refresh_lifetimes(),
        now,
    )?;
    if let (ClientType::Public, Some(jkt)) = (client.client_type, presented_jkt) {
        refresh::bind_to_dpop_key(conn, family_id, jkt)?;
    }
    codes::mark_redeemed(conn, &request.code, family_id)?;
    let signed_in = authentication::of_code(conn, &request.code)?;
    if let Some(signed_in) = &signed_in {
        authentication::record_for_family(conn, family_id, signed_in)?;
    }
    let access_token = sign(
        context,
        &stored.user_id,
        &client.client_id,
        &stored.scopes,
        signed_in.as_ref(),
    )?;
    issued_tokens::record(
        conn,
        &access_token.jti,
        &client.client_id,
        Some(family_id),
        access_token.expires_at,
    )?;
    Ok(Ok(Issued {
        access_token,
        refresh_token: Some(refresh_token),
        scopes: stored.scopes,
    }))
}

pub fn refresh_token(
    conn: &Connection,
    context: &Context<'_>,
    client: &Client,
    request: &RefreshRequest,
) -> Outcome {
    let now = context.now;
    let Some(presented) = refresh::find(conn, &request.refresh_token)? else {
        return refuse("the refresh token is invalid");
    };
    if presented.family.client_id != client.client_id {
        return refuse("the refresh token was issued to another client");
    }
    if let Some(bound) = presented.family.dpop_jkt.as_deref() {
        match context.confirmation.jkt.as_deref() {
            None => {
                return Ok(Err(OAuthError::invalid_dpop_proof(
                    "a DPoP proof is required: the refresh token is bound to a DPoP key",
                )))
            }
            Some(jkt) if jkt != bound => {
                return refuse("the refresh token is bound to another DPoP key")
            }
            Some(_) => {}
        }
    }
    let retry = presented.is_retry(context.config.refresh_reuse_grace(), now);
    let family = presented.family;
    if presented.rotated_at.is_some() && !retry {
        if !family.revoked {
            refresh::revoke_family(conn, family.family_id, now)?;
        }
        METRICS.refresh_token_reused();
        audit::Event::new("refresh_token.reuse_detected")
            .field("client_id", &client.client_id)
            .field("grant_id", family.family_id)
            .field(
                "token_fingerprint",
                audit::fingerprint(&request.refresh_token),
            )
            .field(
                "action",
                if family.revoked {
                    "none_already_revoked"
                } else {
                    "grant_revoked"
                },
            )
            .emit();
        return refuse("the refresh token was already used; its grant is revoked");
    }
    if !family.is_live(now) {
        return refuse("the refresh token expired or was revoked");
    }
    // The scope granted, less any the client may no longer ask for or the user may no
    // longer hold.
    let Some(user_scopes) = users::scopes_of(conn, &family.user_id)? else {
        return refuse("the refresh token's user no longer exists");
    };
    let granted = family
        .scopes
        .intersection(&client.scopes)
        .intersection(&user_scopes);
    let scopes = match &request.scope {
        None => granted,
        Some(requested) if requested.is_subset(&granted) => requested.clone(),
        Some(_) => {
            return Ok(Err(OAuthError::invalid_scope(
                "a refresh may narrow the granted scope, never widen it",
            )))
        }
    };

    let lifetimes = context.config.refresh_lifetimes();
    let refresh_token = if retry {
        refresh::reissue(conn, &family, lifetimes, now)?
    } else {
        refresh::rotate(conn, &family, lifetimes, now)?
    };
    // The original sign-in, never a fresher or stronger one.
    let signed_in = authentication::of_family(conn, family.family_id)?;
    let access_token = sign(
        context,
        &family.user_id,
        &client.client_id,
        &scopes,
        signed_in.as_ref(),
    )?;
    issued_tokens::record(
        conn,
        &access_token.jti,
        &client.client_id,
        Some(family.family_id),
        access_token.expires_at,
    )?;
    Ok(Ok(Issued {
        access_token,
        refresh_token: Some(refresh_token),
        scopes,
    }))
}

fn refuse(description: &'static str) -> Outcome {
    Ok(Err(OAuthError::invalid_grant(description)))
}

fn sign(
    context: &Context<'_>,
    subject: &str,
    client_id: &str,
    scopes: &ScopeSet,
    authentication: Option<&Authentication>,
) -> anyhow::Result<IssuedToken> {
    let grant = Grant {
        issuer: &context.config.issuer,
        audience: &context.config.audience,
        subject,
        client_id,
        scopes,
        lifetime_secs: context.config.access_token_ttl,
        authentication,
        confirmation: Some(context.confirmation),
    };
    access_token::issue(context.keys.signing_key(), &grant, context.now)
        .context("signing access token")
}

//! The admin API under `/admin/`: API-key consumers and their keys.
//!
//! Every call needs `Authorization: Bearer <access token>` issued by this service with
//! the scope [`scope::ADMIN`] (give it to an operator's confidential client and use
//! `client_credentials`). Bodies are JSON with unknown fields refused; answers are JSON,
//! errors in the RFC 6749 §5.2 shape. A key's plaintext appears in exactly one answer,
//! the one that creates it (`POST /admin/api-keys`, `POST /admin/api-keys/{id}/rotate`),
//! and never in the access log, which names the operator's client and token id.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /admin/consumers` | lists consumers |
//! | `POST /admin/consumers` | adds `{id, tenant?, scopes, plan?}` |
//! | `DELETE /admin/consumers/{id}` | removes a consumer and its keys |
//! | `GET /admin/api-keys[?consumer=]` | lists keys (never a digest) |
//! | `POST /admin/api-keys` | creates `{consumer, expires_in? \| expires_at?, allowed_cidrs?}` |
//! | `GET /admin/api-keys/{id}` | one key |
//! | `POST /admin/api-keys/{id}/disable`, `/enable` | switches a key off or on |
//! | `POST /admin/api-keys/{id}/rotate` | a new key like it, `{disable_old?}` |
//! | `DELETE /admin/api-keys/{id}` | deletes a key |
//! | `GET /admin/users/{username}/factors` | a user's second factors (never a secret) |
//! | `DELETE /admin/users/{username}/factors` | removes all of them (lost device) |

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::form::{self, Form};
use super::signin;
use super::{active_access_token, blocking, AppState, LogContext};
use crate::protocol::errors::{no_store_headers, OAuthError};
use crate::protocol::scope::{self, ScopeSet};
use crate::server::{audit, clock};
use crate::storage::api_keys::{self, ApiKey, NewKey, Refused, Restrictions};
use crate::storage::consumers::{self, Consumer};
use crate::storage::{factors, users};

/// The operator behind a call: who the access log names.
struct Operator(LogContext);

/// Checks the bearer token: issued here, unexpired, not revoked, with [`scope::ADMIN`].
async fn operator(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Operator, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(OAuthError::token_required(
            "the admin API needs a bearer access token",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .ok_or_else(|| OAuthError::token_required("the admin API needs a bearer access token"))?;
    let state = Arc::clone(state);
    let verified = blocking(move || {
        let now = clock::now();
        state
            .db
            .with(|conn| active_access_token(&state, conn, &token, now))
            .map_err(|err| OAuthError::internal("checking an admin token", err))
    })
    .await?
    .ok_or_else(OAuthError::invalid_token)?;
    let has_scope = verified
        .scope
        .as_deref()
        .is_some_and(|scope| scope.split(' ').any(|granted| granted == scope::ADMIN));
    if !has_scope {
        return Err(OAuthError::insufficient_scope(scope::ADMIN));
    }
    audit::set_actor(&verified.client_id);
    Ok(Operator(LogContext {
        client_id: verified.client_id,
        token_id: Some(verified.jti),
    }))
}

/// Authenticates the operator, runs `work` on the store and answers with its result.
async fn admin<T: Serialize + Send + 'static>(
    state: Arc<AppState>,
    headers: &HeaderMap,
    status: StatusCode,
    work: impl FnOnce(&AppState, &rusqlite::Connection) -> Result<T, OAuthError> + Send + 'static,
) -> Response {
    match operator(&state, headers).await {
        Ok(operator) => answer(operator, status, in_store(state, work).await),
        Err(err) => err.into_response(),
    }
}

/// Runs `work` on the store, on a blocking thread.
async fn in_store<T: Send + 'static>(
    state: Arc<AppState>,
    work: impl FnOnce(&AppState, &rusqlite::Connection) -> Result<T, OAuthError> + Send + 'static,
) -> Result<T, OAuthError> {
    blocking(move || state.db.with(|conn| work(&state, conn))).await
}

/// `status` with `result` as JSON, or its error; tagged with the operator for the
/// access log either way.
fn answer<T: Serialize>(
    operator: Operator,
    status: StatusCode,
    result: Result<T, OAuthError>,
) -> Response {
    let mut response = match result {
        Ok(body) => (status, no_store_headers(), Json(body)).into_response(),
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(operator.0);
    response
}

/// The JSON body, after the operator is known to be allowed to send one.
async fn json_body<T: DeserializeOwned>(request: Request) -> Result<T, OAuthError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(OAuthError::invalid_request(
            "the body must be application/json",
        ));
    }
    let body = form::read_body(request).await?;
    serde_json::from_slice(&body)
        .map_err(|err| OAuthError::invalid_request(format!("invalid JSON body: {err}")))
}

fn internal(err: impl Into<anyhow::Error>) -> OAuthError {
    OAuthError::internal("the admin API's storage", err.into())
}

// --- Consumers -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewConsumer {
    id: String,
    #[serde(default)]
    tenant: Option<String>,
    /// Space-delimited, or an array of scope tokens.
    #[serde(default)]
    scopes: Scopes,
    #[serde(default)]
    plan: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Scopes {
    #[default]
    None,
    Text(String),
    List(Vec<String>),
}

impl Scopes {
    fn parse(self) -> Result<ScopeSet, OAuthError> {
        let text = match self {
            Scopes::None => String::new(),
            Scopes::Text(text) => text,
            Scopes::List(list) => list.join(" "),
        };
        text.parse()
            .map_err(|_| OAuthError::invalid_request("scopes are not valid scope tokens"))
    }
}

impl NewConsumer {
    fn into_consumer(self, now: i64) -> Result<Consumer, OAuthError> {
        let name = |what: &str, value: &str| {
            consumers::validate_name(what, value).map_err(OAuthError::invalid_request)
        };
        name("consumer id", &self.id)?;
        if let Some(tenant) = &self.tenant {
            name("tenant", tenant)?;
        }
        if let Some(plan) = &self.plan {
            name("plan", plan)?;
        }
        Ok(Consumer {
            id: self.id,
            tenant: self.tenant,
            scopes: self.scopes.parse()?,
            plan: self.plan,
            created_at: now,
        })
    }
}

pub async fn list_consumers(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    admin(state, &headers, StatusCode::OK, |_, conn| {
        let consumers = consumers::list(conn).map_err(internal)?;
        Ok(serde_json::json!({ "consumers": consumers }))
    })
    .await
}

pub async fn add_consumer(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let operator = match operator(&state, request.headers()).await {
        Ok(operator) => operator,
        Err(err) => return err.into_response(),
    };
    let result = async {
        let consumer = json_body::<NewConsumer>(request)
            .await?
            .into_consumer(clock::now())?;
        in_store(state, move |_, conn| {
            if !consumers::insert(conn, &consumer).map_err(internal)? {
                return Err(OAuthError::conflict("a consumer with this id exists"));
            }
            audit::Event::new("consumer.created")
                .field("consumer_id", &consumer.id)
                .field("tenant", &consumer.tenant)
                .field("scope", consumer.scopes.to_string())
                .field("plan", &consumer.plan)
                .emit();
            Ok(consumer)
        })
        .await
    };
    answer(operator, StatusCode::CREATED, result.await)
}

pub async fn remove_consumer(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin(
        state,
        &headers,
        StatusCode::OK,
        move |_, conn| match consumers::remove(conn, &id).map_err(internal)? {
            Some(keys) => {
                audit::Event::new("consumer.removed")
                    .field("consumer_id", &id)
                    .field("removed_api_keys", keys)
                    .emit();
                Ok(serde_json::json!({ "id": id, "removed_keys": keys }))
            }
            None => Err(OAuthError::no_such("no such consumer")),
        },
    )
    .await
}

// --- Users' second factors -----------------------------------------------------------

pub async fn list_user_factors(
    State(state): State<Arc<AppState>>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin(state, &headers, StatusCode::OK, move |_, conn| {
        let Some(user) = users::find_by_username(conn, &username).map_err(internal)? else {
            return Err(OAuthError::no_such("no such user"));
        };
        let list = factors::list(conn, &user.user_id).map_err(internal)?;
        Ok(serde_json::json!({
            "username": username,
            "factors": list.into_iter().map(|factor| serde_json::json!({
                "id": factor.factor_id,
                "kind": factor.kind.as_str(),
                "name": factor.label,
                "created_at": factor.created_at,
                "last_used_at": factor.last_used_at,
            })).collect::<Vec<_>>(),
        }))
    })
    .await
}

pub async fn reset_user_factors(
    State(state): State<Arc<AppState>>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin(state, &headers, StatusCode::OK, move |_, conn| {
        let Some(user) = users::find_by_username(conn, &username).map_err(internal)? else {
            return Err(OAuthError::no_such("no such user"));
        };
        let removed = factors::reset(conn, &user.user_id).map_err(internal)?;
        signin::audit(
            "user.factors_reset",
            serde_json::json!({"user_id": user.user_id, "removed": removed, "by": "admin_api"}),
        );
        Ok(serde_json::json!({ "username": username, "removed_factors": removed }))
    })
    .await
}

// --- Keys --------------------------------------------------------------------------

/// A key as the admin API shows it: never its digest, with its state right now.
#[derive(Serialize)]
struct KeyView {
    #[serde(flatten)]
    key: ApiKey,
    state: &'static str,
    /// Only when the key was just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
}

impl KeyView {
    fn of(key: ApiKey) -> Self {
        let state = key.state(clock::now());
        KeyView {
            key,
            state,
            api_key: None,
        }
    }

    fn created(new: NewKey) -> Self {
        KeyView {
            api_key: Some(new.plaintext),
            ..KeyView::of(new.key)
        }
    }
}

fn refused(refused: Refused) -> OAuthError {
    match refused {
        Refused::NoSuchConsumer | Refused::NoSuchKey => OAuthError::no_such(refused.to_string()),
        Refused::ExpiryInPast => OAuthError::invalid_request(refused.to_string()),
        Refused::OtherHashing { .. } => OAuthError::conflict(refused.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyRequest {
    consumer: String,
    /// Seconds from now.
    #[serde(default)]
    expires_in: Option<u64>,
    /// Unix seconds.
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    allowed_cidrs: Vec<String>,
}

impl NewKeyRequest {
    fn restrictions(&self, now: i64) -> Result<Restrictions, OAuthError> {
        let expires_at = match (self.expires_in, self.expires_at) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "give expires_in or expires_at, not both",
                ))
            }
            (Some(seconds), None) => Some(
                i64::try_from(seconds)
                    .ok()
                    .and_then(|seconds| now.checked_add(seconds))
                    .ok_or_else(|| OAuthError::invalid_request("expires_in is too large"))?,
            ),
            (None, at) => at,
        };
        let allowed_cidrs = self
            .allowed_cidrs
            .iter()
            .map(|cidr| api_keys::parse_cidr(cidr).map_err(OAuthError::invalid_request))
            .collect::<Result<_, _>>()?;
        Ok(Restrictions {
            expires_at,
            allowed_cidrs,
        })
    }
}

pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    admin(state, &headers, StatusCode::OK, move |_, conn| {
        let query = Form::parse(query.unwrap_or_default().as_bytes())
            .map_err(|_| OAuthError::invalid_request("the query string is malformed"))?;
        let consumer = query.get("consumer");
        let keys = api_keys::list(conn, consumer).map_err(internal)?;
        let keys: Vec<KeyView> = keys.into_iter().map(KeyView::of).collect();
        Ok(serde_json::json!({ "api_keys": keys }))
    })
    .await
}

pub async fn create_key(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let operator = match operator(&state, request.headers()).await {
        Ok(operator) => operator,
        Err(err) => return err.into_response(),
    };
    let result = async {
        let now = clock::now();
        let new = json_body::<NewKeyRequest>(request).await?;
        let restrictions = new.restrictions(now)?;
        in_store(state, move |state, conn| {
            let hasher = &state.api_key_hasher;
            let created = api_keys::create(conn, hasher, &new.consumer, &restrictions, now)
                .map_err(internal)?
                .map_err(refused)?;
            audit::api_key_event("api_key.created", &created.key).emit();
            Ok(KeyView::created(created))
        })
        .await
    };
    answer(operator, StatusCode::CREATED, result.await)
}

pub async fn show_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin(state, &headers, StatusCode::OK, move |_, conn| {
        let key = api_keys::find(conn, &id).map_err(internal)?;
        key.map(KeyView::of)
            .ok_or_else(|| refused(Refused::NoSuchKey))
    })
    .await
}

pub async fn disable_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_enabled(state, id, &headers, false).await
}

pub async fn enable_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_enabled(state, id, &headers, true).await
}

async fn set_enabled(
    state: Arc<AppState>,
    id: String,
    headers: &HeaderMap,
    enabled: bool,
) -> Response {
    admin(state, headers, StatusCode::OK, move |_, conn| {
        let key = api_keys::set_enabled(conn, &id, enabled).map_err(internal)?;
        if let Some(key) = &key {
            let event = if enabled {
                "api_key.enabled"
            } else {
                "api_key.disabled"
            };
            audit::api_key_event(event, key).emit();
        }
        key.map(KeyView::of)
            .ok_or_else(|| refused(Refused::NoSuchKey))
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    disable_old: bool,
}

pub async fn rotate_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let operator = match operator(&state, request.headers()).await {
        Ok(operator) => operator,
        Err(err) => return err.into_response(),
    };
    let result = async {
        // The body is optional: no body rotates and leaves the old key enabled.
        let headers = request.headers();
        let has_body = headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length != "0")
            || headers.contains_key(header::TRANSFER_ENCODING);
        let options = if has_body {
            json_body::<RotateRequest>(request).await?
        } else {
            RotateRequest::default()
        };
        in_store(state, move |state, conn| {
            let hasher = &state.api_key_hasher;
            let rotated = api_keys::rotate(conn, hasher, &id, options.disable_old, clock::now())
                .map_err(internal)?
                .map_err(refused)?;
            audit::api_key_event("api_key.rotated", &rotated.key)
                .field("replaces", &id)
                .field("old_key_disabled", options.disable_old)
                .emit();
            Ok(KeyView::created(rotated))
        })
        .await
    };
    answer(operator, StatusCode::CREATED, result.await)
}

pub async fn delete_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin(state, &headers, StatusCode::OK, move |_, conn| {
        if api_keys::delete(conn, &id).map_err(internal)? {
            audit::Event::new("api_key.deleted")
                .field("api_key_id", &id)
                .emit();
            Ok(serde_json::json!({ "id": id, "deleted": true }))
        } else {
            Err(refused(Refused::NoSuchKey))
        }
    })
    .await
}

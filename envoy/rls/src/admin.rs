//! A tiny HTTP endpoint for tests and operators: what the backend answered and
//! what Limitador counts.
//!
//! - `GET /healthz`: `ok` once the limits are loaded and Redis answered.
//! - `GET /stats`: `{"calls", "ok", "over_limit", "errors"}` since start.
//! - `GET /counters/{namespace}`: Limitador's live counters of one namespace (RLS
//!   domain), read from Redis: the limit, the counted descriptor values, what
//!   remains and when the window resets.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::service::Backend;

pub fn router(backend: Arc<Backend>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/stats", get(stats))
        .route("/counters/{namespace}", get(counters))
        .with_state(backend)
}

async fn stats(State(backend): State<Arc<Backend>>) -> Json<Value> {
    Json(json!(backend.stats))
}

async fn counters(State(backend): State<Arc<Backend>>, Path(namespace): Path<String>) -> Response {
    match backend.limiter.get_counters(&namespace.into()).await {
        Ok(counters) => {
            let mut list: Vec<Value> = counters
                .iter()
                .map(|c| {
                    let limit = c.limit();
                    json!({
                        "limit": {
                            "name": limit.name(),
                            "max_value": limit.max_value(),
                            "seconds": limit.seconds(),
                            "conditions": limit.conditions(),
                            "variables": limit.variables(),
                        },
                        "set_variables": c.set_variables(),
                        "remaining": c.remaining(),
                        "expires_in_ms": c.expires_in().map(|d| d.as_millis()),
                    })
                })
                .collect();
            list.sort_by_key(|v| v.to_string());
            Json(Value::Array(list)).into_response()
        }
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("counter storage: {err}\n"),
        )
            .into_response(),
    }
}

//! `sample-api`: a stand-in upstream that echoes each request back as JSON, so a user
//! can see what reaches an API behind Tollgate: the credential stripped, identity
//! headers injected.
//!
//! Every method and path answers 200 with
//! `{"method", "path", "query", "headers", "body_bytes"}`. Header names are lowercase;
//! a header sent more than once appears once, its values joined with ", " in order
//! (the RFC 9110 §5.3 combination).

use std::net::SocketAddr;

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Map, Value};

/// Larger bodies are refused rather than buffered.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "sample-api",
    version,
    about = "Echoes every request back as JSON"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SAMPLE_API_LISTEN", default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("sample-api listening on http://{}", listener.local_addr()?);
    let app = Router::new().fallback(echo);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let response = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => Json(describe(&method, &uri, &headers, body.len())).into_response(),
        Err(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({ "error": format!("body unreadable or over {MAX_BODY_BYTES} bytes") })),
        )
            .into_response(),
    };
    eprintln!("{method} {} {}", uri.path(), response.status().as_u16());
    response
}

fn describe(method: &Method, uri: &Uri, headers: &HeaderMap, body_bytes: usize) -> Value {
    let mut echoed = Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect();
        echoed.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": echoed,
        "body_bytes": body_bytes,
    })
}

async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn describes_request_with_joined_repeated_headers() {
        let mut headers = HeaderMap::new();
        headers.append("X-Tollgate-Sub", HeaderValue::from_static("mobile-app"));
        headers.append("accept", HeaderValue::from_static("text/plain"));
        headers.append("accept", HeaderValue::from_static("application/json"));
        let uri: Uri = "/v1/items?limit=2&x=%20".parse().expect("uri");
        let described = describe(&Method::PATCH, &uri, &headers, 7);
        assert_eq!(
            described,
            json!({
                "method": "PATCH",
                "path": "/v1/items",
                "query": "limit=2&x=%20",
                "headers": {
                    "x-tollgate-sub": "mobile-app",
                    "accept": "text/plain, application/json",
                },
                "body_bytes": 7,
            })
        );
    }

    #[test]
    fn query_is_null_without_one() {
        let described = describe(
            &Method::GET,
            &"/".parse().expect("uri"),
            &HeaderMap::new(),
            0,
        );
        assert_eq!(described["query"], Value::Null);
        assert_eq!(described["headers"], json!({}));
    }
}

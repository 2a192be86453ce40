//! `tollgate-rls-backend`: Envoy's rate-limit service (RLS v3, gRPC) on Kuadrant's
//! Limitador engine with its counters in Redis, for Tollgate's tests and the
//! fleet sample (`make run FLEET=1`). Several gateways pointed at it, or at
//! several copies of it sharing one Redis, share one limit.
//!
//! Test and sample infrastructure, not part of the product: it listens on
//! loopback only and its admin endpoint has no authentication.

mod admin;
mod limits;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use limitador::storage::redis::AsyncRedisStorage;
use limitador::AsyncRateLimiter;

use service::{Backend, Options, RlsService};

#[derive(Parser)]
#[command(
    name = "tollgate-rls-backend",
    version,
    about = "Envoy's rate-limit service (RLS v3) over Limitador, counters in Redis"
)]
struct Args {
    /// Limits in Limitador's format (YAML or JSON): namespace = RLS domain,
    /// CEL conditions and variables over `descriptors`.
    #[arg(long)]
    limits: PathBuf,
    /// Where the counters live.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// gRPC address of the rate-limit service (loopback only).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// HTTP address of the admin endpoint: /healthz, /stats, /counters/{namespace}.
    #[arg(long, default_value = "127.0.0.1:8082")]
    admin: SocketAddr,
    /// Milliseconds to wait before each answer: a slow backend, for timeout tests.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Headers to send in response_headers_to_add.
    #[arg(long, value_enum, default_value_t = RateLimitHeaders::None)]
    rate_limit_headers: RateLimitHeaders,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RateLimitHeaders {
    None,
    /// Limitador's X-RateLimit-Limit, -Remaining, -Reset (draft-polli-ratelimit-headers-03).
    #[value(name = "draft-version-03")]
    DraftVersion03,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (what, addr) in [("--listen", args.listen), ("--admin", args.admin)] {
        if !addr.ip().is_loopback() {
            bail!("{what} {addr}: this test backend listens on loopback only");
        }
    }
    let limits = limits::load(&args.limits)?;
    let storage = AsyncRedisStorage::new(&args.redis)
        .await
        .with_context(|| format!("cannot use Redis at {}", args.redis))?;
    let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
    let count = limits.len();
    limiter
        .configure_with(limits)
        .await
        .map_err(|err| anyhow::anyhow!("cannot load the limits: {err}"))?;

    let backend = Arc::new(Backend::new(
        limiter,
        Options {
            delay: Duration::from_millis(args.delay_ms),
            rate_limit_headers: args.rate_limit_headers == RateLimitHeaders::DraftVersion03,
        },
    ));
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin))?;
    eprintln!(
        "tollgate-rls-backend: {count} limits, counters in {}; RLS gRPC on {}, admin on http://{}",
        args.redis,
        args.listen,
        admin_listener.local_addr()?
    );

    let grpc = async {
        tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(RlsService(Arc::clone(
                &backend,
            ))))
            .serve_with_shutdown(args.listen, shutdown_signal())
            .await
            .with_context(|| format!("RLS gRPC server on {}", args.listen))
    };
    let admin = async {
        axum::serve(admin_listener, admin::router(Arc::clone(&backend)))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("admin server")
    };
    // The first to fail (say, the gRPC port is taken) ends the process.
    tokio::try_join!(grpc, admin)?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

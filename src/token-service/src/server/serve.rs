//! `serve`: prepares the store (records the token TTL, creates the first signing key),
//! runs the HTTP server ([`connections`]) until SIGTERM or SIGINT, letting in-flight
//! requests finish, and prunes expired codes, grants and revocations once a minute.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::crypto::sealed::Sealer;
use crate::crypto::{opaque, secrets};
use crate::http::signin::Passkeys;
use crate::http::{self, AppState};
use crate::protocol::pending::LoginForms;
use crate::protocol::{codes, dpop, refresh};
use crate::server::clock;
use crate::server::config::ServeConfig;
use crate::server::connections;
use crate::server::throttle::Throttle;
use crate::storage::api_key_hashing::KeyHasher;
use crate::storage::db::{self, Database};
use crate::storage::keystore::{self, KeyCache};
use crate::storage::{issued_tokens, revocation};

const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

pub fn run(db_path: &Path, config: ServeConfig, api_key_hasher: KeyHasher) -> anyhow::Result<()> {
    let mut conn = db::open(db_path)?;
    keystore::record_access_token_ttl(&conn, config.access_token_ttl)?;
    match keystore::ensure_active(&mut conn, config.alg, clock::now())? {
        Some(kid) => eprintln!("generated {} signing key {kid}", config.alg),
        None => {
            if let Some(active) = keystore::active_algorithm(&conn)? {
                if active != config.alg {
                    eprintln!(
                        "note: the active signing key is {active}; --alg {} only applies when \
                         no key exists (use `keys rotate --alg {}` to switch)",
                        config.alg, config.alg
                    );
                }
            }
        }
    }

    raise_file_limit(config.max_connections)?;
    let parallelism = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let login_forms = LoginForms::load(&conn)?;
    let sessions = Sealer::load(&conn, "session_key")?;
    let passkeys = Passkeys::for_issuer(&config.issuer);
    let state = Arc::new(AppState {
        secrets: secrets::Verifier::new(parallelism)?,
        db: Database::new(conn),
        keys: KeyCache::default(),
        throttle: Throttle::new(config.throttle_limits()),
        login_forms,
        api_key_hasher,
        sessions,
        passkeys,
        // A key per process: after a restart, clients get one more use_dpop_nonce.
        dpop_nonces: config.dpop_nonce.then(|| {
            let rotation = i64::try_from(config.dpop_nonce_rotation).unwrap_or(300);
            dpop::Nonces::new(opaque::random_bytes(), rotation)
        }),
        config,
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listen = state.config.listen;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        eprintln!(
            "listening on http://{} (issuer {}, audience {})",
            listener.local_addr()?,
            state.config.issuer,
            state.config.audience
        );
        tokio::spawn(prune_periodically(state.db.clone()));
        let limits = state.config.connection_limits();
        connections::serve(listener, http::router(state), limits, shutdown_signal()).await;
        eprintln!("shut down");
        Ok(())
    })
}

/// File descriptors needed besides the connections: the listener, the database and
/// its journal, standard streams, the runtime's own.
const SPARE_FILES: u64 = 64;

/// Makes sure `max_connections` sockets can be open at once: raises the soft limit on
/// open files up to the hard limit if needed, or explains what to change.
fn raise_file_limit(max_connections: u32) -> anyhow::Result<()> {
    let needed = u64::from(max_connections) + SPARE_FILES;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the open-file limit");
    }
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max != libc::RLIM_INFINITY && limit.rlim_max < needed {
        anyhow::bail!(
            "--max-connections {max_connections} needs {needed} open files, but the limit is \
             {} (hard {}): lower --max-connections or raise the limit (ulimit -n)",
            limit.rlim_cur,
            limit.rlim_max
        );
    }
    limit.rlim_cur = needed;
    // SAFETY: setrlimit reads one rlimit through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("raising the open-file limit");
    }
    Ok(())
}

/// Deletes what has expired: unused authorization codes, dead grants past their
/// retention, and revocations of access tokens that expired anyway.
async fn prune_periodically(db: Database) {
    let mut interval = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        interval.tick().await;
        let db = db.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            db.transaction(|tx| {
                let now = clock::now();
                codes::prune(tx, now)?;
                refresh::prune(tx, now)?;
                issued_tokens::prune(tx, now)?;
                revocation::prune(tx, now)?;
                Ok(())
            })
        })
        .await;
        match pruned {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("error: pruning expired grants: {err:#}"),
            Err(err) => eprintln!("error: pruning task failed: {err}"),
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what service managers and container
/// runtimes send).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for SIGINT: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(err) => {
                eprintln!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => eprintln!("SIGINT received, shutting down"),
        () = terminate => eprintln!("SIGTERM received, shutting down"),
    }
}

//! Accepting and keeping HTTP/1.1 connections, with the limits a public server needs:
//!
//! - **Header-read timeout**: once the first byte of a request has arrived, its whole
//!   head must arrive within `--header-read-timeout`, or the connection is closed. A
//!   client trickling its headers a byte at a time holds a connection no longer.
//! - **Keep-alive timeout**: a connection with no request being handled and no byte
//!   read or written for `--keep-alive-timeout` is closed, whether it never sent
//!   anything or is idle between requests (or stopped reading a response: it gets
//!   one header-read timeout more to finish).
//! - **Connection cap**: at most `--max-connections` are open. At the cap, new ones
//!   wait in the listen backlog until one closes, which the timeouts above guarantee,
//!   and the server logs that it hit the cap (at most every 10 s).
//!
//! Request bodies have their own time limit ([`crate::http::form`]). hyper serves each
//! connection; the header timer is kept here rather than in hyper because hyper's also
//! runs between requests, which would tie the keep-alive timeout to it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tower_service::Service as _;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Least time between two "connection cap reached" log lines.
const CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long to pause accepting after an error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Connection limits, from `serve`'s flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut last_cap_log: Option<Instant> = None;
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if last_cap_log.is_none_or(|at| at.elapsed() >= CAP_LOG_INTERVAL) {
                    eprintln!(
                        "warning: {} connections open, the --max-connections cap: new \
                         connections wait until one closes",
                        limits.max_connections
                    );
                    last_cap_log = Some(Instant::now());
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    eprintln!("error: accepting a connection: {err}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, app, limits, stopping).await;
            drop(slot);
        });
    }
    drop(listener);
    // Connections finish their current exchange and close; each holds a slot until then.
    let _ = stop.send(true);
    let everyone = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(everyone))
        .await
        .is_err()
    {
        eprintln!(
            "warning: requests still running {}s after the shutdown signal were cut off",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

/// Serves one connection until it closes, times out, or the server shuts down.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        stream,
        activity: Arc::clone(&activity),
    });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let handling = Handling::start(Arc::clone(&activity));
            let mut app = app.clone();
            async move {
                let response = app.call(request).await;
                drop(handling);
                response
            }
        })
    };
    let mut connection = pin!(http1::Builder::new().serve_connection(io, service));
    let mut closing_since: Option<Instant> = None;
    loop {
        let deadline = activity.deadline(limits, closing_since);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = tokio::time::sleep_until(deadline) => {}
            () = activity.head_started.notified() => continue,
            changed = stopping.changed(), if closing_since.is_none() => {
                if changed.is_err() || *stopping.borrow() {
                    connection.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
                continue;
            }
        }
        match activity.verdict(limits, closing_since, Instant::now()) {
            Verdict::Keep => {}
            // Closes an idle connection at once; otherwise lets the current exchange
            // finish, within one more header-read timeout.
            Verdict::WindDown => {
                connection.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            Verdict::Close => return,
        }
    }
}

/// What a connection's clocks say.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    WindDown,
    Close,
}

/// The state of one connection, updated by its reads and writes and its requests.
struct Activity {
    state: Mutex<ActivityState>,
    /// Signalled when the first byte of a request head arrives, to start its timer.
    head_started: Notify,
}

struct ActivityState {
    /// The last byte read or written.
    last_io: Instant,
    /// When the first byte arrived of a request head not complete yet.
    head_since: Option<Instant>,
    /// Requests being handled (hyper handles one at a time; pipelining queues).
    handling: usize,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                last_io: Instant::now(),
                head_since: None,
                handling: 0,
            }),
            head_started: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self, bytes: usize) {
        let now = Instant::now();
        let mut state = self.lock();
        state.last_io = now;
        if bytes > 0 && state.handling == 0 && state.head_since.is_none() {
            state.head_since = Some(now);
            drop(state);
            self.head_started.notify_one();
        }
    }

    fn wrote(&self) {
        self.lock().last_io = Instant::now();
    }

    /// When to look at the connection again.
    fn deadline(&self, limits: Limits, closing_since: Option<Instant>) -> Instant {
        let state = self.lock();
        if let Some(closing) = closing_since {
            return closing + limits.header_read_timeout;
        }
        match state.head_since {
            Some(since) if state.handling == 0 => since + limits.header_read_timeout,
            _ if state.handling > 0 => Instant::now() + limits.keep_alive_timeout,
            _ => state.last_io + limits.keep_alive_timeout,
        }
    }

    fn verdict(&self, limits: Limits, closing_since: Option<Instant>, now: Instant) -> Verdict {
        let state = self.lock();
        if let Some(closing) = closing_since {
            return if now >= closing + limits.header_read_timeout {
                Verdict::Close
            } else {
                Verdict::Keep
            };
        }
        if state.handling > 0 {
            return Verdict::Keep;
        }
        match state.head_since {
            Some(since) if now >= since + limits.header_read_timeout => Verdict::Close,
            Some(_) => Verdict::Keep,
            None if now >= state.last_io + limits.keep_alive_timeout => Verdict::WindDown,
            None => Verdict::Keep,
        }
    }
}

/// A request being handled: its head is complete; the connection is not idle.
struct Handling(Arc<Activity>);

impl Handling {
    fn start(activity: Arc<Activity>) -> Self {
        {
            let mut state = activity.lock();
            state.handling += 1;
            state.head_since = None;
        }
        Self(activity)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.handling = state.handling.saturating_sub(1);
        state.last_io = Instant::now();
    }
}

/// The socket, reporting its reads and writes to the connection's [`Activity`].
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.activity.read(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            if written > 0 {
                self.activity.wrote();
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled {
            if written > 0 {
                self.activity.wrote();
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        keep_alive_timeout: Duration::from_secs(60),
        max_connections: 8,
    };

    #[tokio::test(start_paused = true)]
    async fn idle_connections_wind_down_after_the_keep_alive_timeout() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(
            activity.deadline(LIMITS, None),
            start + LIMITS.keep_alive_timeout
        );
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(activity.verdict(LIMITS, None, at(59)), Verdict::Keep);
        assert_eq!(activity.verdict(LIMITS, None, at(60)), Verdict::WindDown);
        // Winding down: closed one header-read timeout later if still open.
        assert_eq!(
            activity.verdict(LIMITS, Some(at(60)), at(65)),
            Verdict::Keep
        );
        assert_eq!(
            activity.verdict(LIMITS, Some(at(60)), at(70)),
            Verdict::Close
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_complete_within_the_header_read_timeout() {
        let activity = Activity::new();
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.read(1);
        let head = start + Duration::from_secs(3);
        assert_eq!(
            activity.deadline(LIMITS, None),
            head + LIMITS.header_read_timeout
        );
        // More bytes do not restart the head's clock.
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.read(1);
        assert_eq!(
            activity.verdict(LIMITS, None, head + Duration::from_secs(9)),
            Verdict::Keep
        );
        assert_eq!(
            activity.verdict(LIMITS, None, head + LIMITS.header_read_timeout),
            Verdict::Close
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_handled_keeps_the_connection() {
        let activity = Arc::new(Activity::new());
        activity.read(10);
        let handling = Handling::start(Arc::clone(&activity));
        let later = Instant::now() + Duration::from_secs(3_600);
        assert_eq!(activity.verdict(LIMITS, None, later), Verdict::Keep);
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(handling);
        // Idle from the end of the request on.
        let done = Instant::now();
        assert_eq!(
            activity.deadline(LIMITS, None),
            done + LIMITS.keep_alive_timeout
        );
        assert_eq!(
            activity.verdict(LIMITS, None, done + LIMITS.keep_alive_timeout),
            Verdict::WindDown
        );
    }
}

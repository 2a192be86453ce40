//! Child processes for integration tests: free loopback ports, a guard that kills its
//! process on drop and keeps the process's output in a log file, and waiting until an
//! HTTP endpoint answers.

use std::fs::OpenOptions;
use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

/// Where [`free_port`] picks: below Linux's ephemeral range (32768-60999), so that the
/// source port of some outgoing connection cannot take a port between the moment it
/// is picked and the moment a server binds it.
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_768;

/// Ports [`free_port`] has handed out in this process.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A random port that was free a moment ago on 127.0.0.1. Another process may still
/// take it before it is used: launchers should retry with a new port if binding fails.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
    for _ in 0..1_000 {
        // RandomState is seeded randomly per thread and per call: a cheap random number.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let port = TEST_PORTS.start + u16::try_from(hasher.finish() % span).unwrap_or(0);
        // Never the same port twice in one test binary: its tests run in parallel, and
        // a port handed out but not bound yet is still free (a cold CI run had two
        // Envoys pick one port, and the second could not bind it).
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}")
}

/// Polls `url` with GET until it answers 2xx, or fails after `timeout`.
pub fn wait_for_http(url: &str, timeout: Duration) -> Result<(), String> {
    poll_http(url, timeout, || Ok(()))
}

/// Polls `url` until it answers 2xx; `still_valid` is checked between attempts and can
/// end the wait early with an error.
fn poll_http(
    url: &str,
    timeout: Duration,
    mut still_valid: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .into();
    let deadline = Instant::now() + timeout;
    loop {
        let last = match agent.get(url).call() {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("status {}", response.status()),
            Err(err) => err.to_string(),
        };
        still_valid()?;
        if Instant::now() >= deadline {
            return Err(format!("{url} not ready after {timeout:?} (last: {last})"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A running child process whose stdout and stderr go to a temporary log file.
/// Dropping it kills the process; if the test is panicking, the log is printed first
/// so that the failure shows what the process said.
pub struct ChildProcess {
    name: String,
    child: Child,
    log: NamedTempFile,
}

impl ChildProcess {
    /// Spawns `command` with its output captured; `name` labels logs and errors.
    pub fn spawn(name: &str, mut command: Command) -> io::Result<Self> {
        let log = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .suffix(".log")
            .tempfile()?;
        // Append mode: stdout and stderr share the file without overwriting each other.
        let output = OpenOptions::new().append(true).open(log.path())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(self.log.path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|err| format!("<cannot read {} log: {err}>", self.name))
    }

    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// The exit status, if the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until `url` answers 2xx; fails at once, with the log, if the process exits.
    pub fn wait_for_http(&mut self, url: &str, timeout: Duration) -> Result<(), String> {
        let name = self.name.clone();
        let child = &mut self.child;
        let result = poll_http(url, timeout, || match child.try_wait() {
            Ok(Some(status)) => Err(format!("{name} exited with {status}")),
            Ok(None) => Ok(()),
            Err(err) => Err(format!("cannot check {name}: {err}")),
        });
        result.map_err(|err| format!("{err}\n--- {} log ---\n{}", self.name, self.log()))
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; kills it after
    /// that. Returns how it exited.
    pub fn terminate(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| io::Error::other("pid out of range"))?;
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child,
        // which has not been reaped yet, so the pid cannot have been reused.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{} ignored SIGTERM for {timeout:?} and was killed",
                self.name
            ),
        ))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                self.name,
                self.log.path().display(),
                self.log()
            );
        }
        // Already exited is fine; there is nothing better to do with an error here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

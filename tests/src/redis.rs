//! Runs a real Redis (Debian's `redis-server`) on a free loopback port, in memory
//! only (no RDB or AOF files), for the rate-limit backend's shared counters.

use super::process::{free_port, ChildProcess};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// `REDIS_SERVER_BIN`, else `redis-server` from PATH, which `make test` installs.
pub fn redis_server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("REDIS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server is not installed.\n\
             Install it with `make tools` (apt-get install -y redis-server), \
             or point REDIS_SERVER_BIN at a redis-server binary. \
             `make test` does this for you."
        )
    })
}

pub struct Redis {
    pub process: ChildProcess,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts Redis and waits until it answers PING; retries on another port if
    /// the one picked was taken meanwhile.
    pub fn start() -> Redis {
        let mut last = String::new();
        for _ in 0..3 {
            match Redis::try_start(free_port()) {
                Ok(redis) => return redis,
                Err(err) => last = err,
            }
        }
        panic!("Redis did not start:\n{last}")
    }

    fn try_start(port: u16) -> Result<Redis, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut command = Command::new(redis_server_binary());
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path());
        let mut process = ChildProcess::spawn("redis", command).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ping(port).is_ok() {
                return Ok(Redis {
                    process,
                    port,
                    _dir: dir,
                });
            }
            if let Some(status) = process.exit_status() {
                return Err(format!("redis exited with {status}:\n{}", process.log()));
            }
            if Instant::now() >= deadline {
                return Err(format!("redis not answering PING:\n{}", process.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// One PING over RESP's inline form: Ok once Redis is up.
fn ping(port: u16) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply)
        )))
    }
}

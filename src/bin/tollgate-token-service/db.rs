//! The SQLite store: opening the file, connection settings and schema migrations.
//!
//! One embedded file holds clients and signing keys, so the CLI and the running server
//! share state without a network hop. WAL lets the CLI write while the server reads, and
//! `busy_timeout` makes concurrent writers wait instead of failing with SQLITE_BUSY.
//! Schema changes are numbered migrations recorded in `PRAGMA user_version`: append a
//! new entry to [`MIGRATIONS`], never edit an applied one.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rusqlite::{Connection, TransactionBehavior};

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migration `n` (1-based) brings the schema from `user_version = n - 1` to `n`.
const MIGRATIONS: &[&str] = &[
    // 1: confidential clients, signing keys, service settings.
    r#"
    CREATE TABLE clients (
        client_id   TEXT PRIMARY KEY NOT NULL,
        -- 'public' is reserved for clients without a secret (authorization code + PKCE).
        client_type TEXT NOT NULL CHECK (client_type IN ('confidential', 'public')),
        -- Argon2id PHC string; never the secret itself.
        secret_hash TEXT,
        -- Space-delimited scopes the client may request.
        scopes      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        CHECK (client_type <> 'confidential' OR secret_hash IS NOT NULL)
    ) STRICT;

    CREATE TABLE signing_keys (
        kid             TEXT PRIMARY KEY NOT NULL,
        alg             TEXT NOT NULL,
        -- PKCS#8 (EC, Ed25519) or PKCS#1 (RSA) DER; erased when the key is retired.
        private_key_der BLOB,
        public_jwk      TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        retired_at      INTEGER,
        -- Published in the JWKS until every token the key signed has expired.
        publish_until   INTEGER,
        CHECK ((retired_at IS NULL) = (private_key_der IS NOT NULL)),
        CHECK ((retired_at IS NULL) = (publish_until IS NULL))
    ) STRICT;

    -- At most one active (signing) key.
    CREATE UNIQUE INDEX signing_keys_one_active
        ON signing_keys (retired_at IS NULL) WHERE retired_at IS NULL;

    CREATE TABLE settings (
        name  TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) STRICT;
    "#,
];

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    create_owner_only(path).with_context(|| format!("creating database {}", path.display()))?;
    let mut conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let journal_mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        bail!(
            "database {} cannot use WAL journaling (got {journal_mode})",
            path.display()
        );
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    migrate(&mut conn).with_context(|| format!("migrating database {}", path.display()))?;
    Ok(conn)
}

/// The file holds private signing keys: make sure a new one is readable by its owner
/// only (SQLite gives the -wal and -shm files the same mode).
fn create_owner_only(path: &Path) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "schema version {version} is newer than this binary supports ({}); upgrade tollgate-token-service",
            MIGRATIONS.len()
        );
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(migration)
            .with_context(|| format!("applying migration {}", index + 1))?;
        tx.pragma_update(None, "user_version", index + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// The server's shared connection. Statements are short and SQLite serialises writers
/// anyway, so one connection behind a mutex is enough; callers run on blocking threads.
#[derive(Clone)]
pub struct Database(Arc<Mutex<Connection>>);

impl Database {
    pub fn new(conn: Connection) -> Self {
        Self(Arc::new(Mutex::new(conn)))
    }

    /// Runs `f` with exclusive use of the connection. Blocks: call from a blocking thread.
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        // A panic mid-statement leaves no open transaction behind (rusqlite rolls back on
        // drop), so the connection is still sound after poisoning.
        let conn = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.db");
        let version = |conn: &Connection| -> usize {
            conn.query_row("PRAGMA user_version", [], |row| row.get(0))
                .expect("version")
        };
        assert_eq!(version(&open(&path).expect("first open")), MIGRATIONS.len());
        assert_eq!(version(&open(&path).expect("reopen")), MIGRATIONS.len());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.db");
        let conn = open(&path).expect("open");
        conn.pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .expect("bump version");
        drop(conn);
        let err = open(&path).expect_err("newer schema must be refused");
        assert!(
            format!("{err:#}").contains("newer than this binary"),
            "{err:#}"
        );
    }
}

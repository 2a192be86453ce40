//! The SQLite store: opening the file, connection settings and schema migrations.
//!
//! One embedded file holds clients, users, signing keys, grants and API keys, so the
//! CLI and the running server share state without a network hop. WAL lets the CLI
//! write while the server reads, and `busy_timeout` makes concurrent writers wait
//! instead of failing with SQLITE_BUSY. Schema changes are numbered migrations recorded
//! in `PRAGMA user_version`: append a new entry to [`MIGRATIONS`], never edit an
//! applied one.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rusqlite::{Connection, Transaction, TransactionBehavior};

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
    // 2: authorization code + PKCE, users, refresh-token families, revoked access tokens.
    r#"
    -- Exact-match redirection endpoints (RFC 6749 §3.1.2, RFC 9700 §2.1).
    CREATE TABLE client_redirect_uris (
        client_id    TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
        redirect_uri TEXT NOT NULL,
        PRIMARY KEY (client_id, redirect_uri)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE users (
        -- Opaque and never reused: the `sub` of the user's tokens.
        user_id       TEXT PRIMARY KEY NOT NULL,
        username      TEXT NOT NULL UNIQUE,
        -- Argon2id PHC string; never the password itself.
        password_hash TEXT NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;

    -- One authorization grant: the refresh tokens rotated from one authorization code.
    CREATE TABLE token_families (
        family_id           INTEGER PRIMARY KEY,
        client_id           TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
        user_id             TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        -- The scope the user granted: refreshes may narrow it, never widen it.
        scopes              TEXT NOT NULL,
        created_at          INTEGER NOT NULL,
        -- When the current refresh token stops working (never after absolute_expires_at).
        idle_expires_at     INTEGER NOT NULL,
        absolute_expires_at INTEGER NOT NULL,
        revoked_at          INTEGER,
        CHECK (idle_expires_at <= absolute_expires_at)
    ) STRICT;
    CREATE INDEX token_families_client ON token_families (client_id);
    CREATE INDEX token_families_user ON token_families (user_id);
    CREATE INDEX token_families_idle_expiry ON token_families (idle_expires_at);

    CREATE TABLE refresh_tokens (
        -- SHA-256 of the token; the token itself is never stored.
        token_hash BLOB PRIMARY KEY NOT NULL,
        family_id  INTEGER NOT NULL REFERENCES token_families (family_id) ON DELETE CASCADE,
        issued_at  INTEGER NOT NULL,
        -- Set when the token is exchanged; presenting it again is reuse.
        rotated_at INTEGER
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

    CREATE TABLE authorization_codes (
        -- SHA-256 of the code.
        code_hash      BLOB PRIMARY KEY NOT NULL,
        client_id      TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
        user_id        TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        redirect_uri   TEXT NOT NULL,
        scopes         TEXT NOT NULL,
        -- BASE64URL(SHA-256(code_verifier)) (RFC 7636 S256); NULL without PKCE.
        code_challenge TEXT,
        expires_at     INTEGER NOT NULL,
        -- The grant the code started, once redeemed: revoked if the code is replayed.
        family_id      INTEGER REFERENCES token_families (family_id) ON DELETE CASCADE
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX authorization_codes_family ON authorization_codes (family_id);

    -- Access tokens issued within a family, so that revoking the family revokes them.
    CREATE TABLE family_access_tokens (
        jti        TEXT PRIMARY KEY NOT NULL,
        family_id  INTEGER NOT NULL REFERENCES token_families (family_id) ON DELETE CASCADE,
        expires_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX family_access_tokens_family ON family_access_tokens (family_id);
    CREATE INDEX family_access_tokens_expiry ON family_access_tokens (expires_at);

    -- Revoked access tokens until they expire: the gateway's revocation feed.
    CREATE TABLE revoked_access_tokens (
        jti        TEXT PRIMARY KEY NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX revoked_access_tokens_expiry ON revoked_access_tokens (expires_at);
    "#,
    // 3: API-key consumers and their keys, stored as digests only.
    r#"
    CREATE TABLE consumers (
        id         TEXT PRIMARY KEY NOT NULL,
        tenant     TEXT,
        -- Space-delimited scopes every key of the consumer carries.
        scopes     TEXT NOT NULL,
        -- Rate-limit plan, a name in the gateway's `rate_limits.plans`.
        plan       TEXT,
        created_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE api_keys (
        id            TEXT PRIMARY KEY NOT NULL,
        consumer_id   TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
        -- SHA-256 of the key, or HMAC-SHA256 under the pepper, in lowercase hex; never
        -- the key itself nor any part of it.
        digest        TEXT NOT NULL UNIQUE,
        hashing       TEXT NOT NULL CHECK (hashing IN ('sha256', 'hmac-sha256')),
        expires_at    INTEGER,
        -- Space-separated address blocks the key may be used from; empty: any.
        allowed_cidrs TEXT NOT NULL,
        enabled       INTEGER NOT NULL CHECK (enabled IN (0, 1)),
        created_at    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX api_keys_consumer ON api_keys (consumer_id);
    "#,
    // 4: keys the service keeps for itself.
    r#"
    -- E.g. the key login forms are signed with (HMAC-SHA256): random, never shown.
    CREATE TABLE service_keys (
        name  TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL
    ) STRICT;
    "#,
    // 5: refresh-token generations, for the retry grace window.
    r#"
    -- The generation whose refresh tokens may be exchanged; each exchange starts the next.
    ALTER TABLE token_families ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    -- Tokens of the same generation are a token and its retries' reissues.
    ALTER TABLE refresh_tokens ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX refresh_tokens_family_generation ON refresh_tokens (family_id, generation);
    "#,
    // 6: every issued access token by client (client_credentials ones too), so that
    //    removing or disabling a client revokes them; clients can be disabled.
    r#"
    CREATE TABLE issued_access_tokens (
        jti        TEXT PRIMARY KEY NOT NULL,
        client_id  TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
        -- The user's grant that issued it; NULL for client_credentials.
        family_id  INTEGER REFERENCES token_families (family_id) ON DELETE CASCADE,
        expires_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    INSERT INTO issued_access_tokens (jti, client_id, family_id, expires_at)
        SELECT a.jti, f.client_id, a.family_id, a.expires_at
        FROM family_access_tokens a JOIN token_families f USING (family_id);
    DROP TABLE family_access_tokens;
    CREATE INDEX issued_access_tokens_client ON issued_access_tokens (client_id);
    CREATE INDEX issued_access_tokens_family ON issued_access_tokens (family_id);
    CREATE INDEX issued_access_tokens_expiry ON issued_access_tokens (expires_at);

    -- A disabled client cannot authenticate; its tokens were revoked when it was disabled.
    ALTER TABLE clients ADD COLUMN disabled_at INTEGER;
    "#,
    // 7: per-user permissions and per-client default scopes.
    r#"
    -- Space-delimited scopes the user may hold; a token gets what the client may ask
    -- for, the user may hold and the request asked for. Users from before hold none.
    ALTER TABLE users ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
    -- What a request without `scope` gets (a subset of `scopes`); empty: nothing.
    ALTER TABLE clients ADD COLUMN default_scopes TEXT NOT NULL DEFAULT '';
    "#,
    // 8: sender-constrained tokens: DPoP (RFC 9449) and mutual TLS (RFC 8705).
    r#"
    -- RFC 7638 thumbprint the code was bound to by `dpop_jkt` (RFC 9449 §10).
    ALTER TABLE authorization_codes ADD COLUMN dpop_jkt TEXT;
    -- A public client's grant bound to its DPoP key: refreshes must prove that key.
    ALTER TABLE token_families ADD COLUMN dpop_jkt TEXT;
    -- DPoP proofs already used, until they would be too old anyway: SHA-256 of
    -- "<jkt>.<jti>".
    CREATE TABLE dpop_proofs (
        proof_hash BLOB PRIMARY KEY NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX dpop_proofs_expiry ON dpop_proofs (expires_at);
    -- Clients that authenticate with a certificate (tls_client_auth or
    -- self_signed_tls_client_auth): what the certificate must show.
    CREATE TABLE client_tls_auth (
        client_id TEXT PRIMARY KEY NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
        parameter TEXT NOT NULL CHECK (parameter IN ('tls_client_auth_subject_dn',
            'tls_client_auth_san_dns', 'tls_client_auth_san_uri', 'x5t#S256')),
        value     TEXT NOT NULL
    ) STRICT;
    "#,
    // 9: second factors (TOTP, passkeys), and how the user of a code or grant signed in.
    r#"
    CREATE TABLE user_factors (
        factor_id      TEXT PRIMARY KEY NOT NULL,
        user_id        TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        kind           TEXT NOT NULL CHECK (kind IN ('totp', 'passkey')),
        label          TEXT NOT NULL,
        -- TOTP: the base32 seed; passkey: the public credential (JSON).
        secret         TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        last_used_at   INTEGER,
        -- TOTP: the last time step accepted; a code of that step or earlier is a replay.
        totp_last_step INTEGER
    ) STRICT;
    CREATE INDEX user_factors_user ON user_factors (user_id);
    -- One authenticator app per user.
    CREATE UNIQUE INDEX user_factors_one_totp ON user_factors (user_id) WHERE kind = 'totp';

    -- JSON: {"auth_time": …, "methods": […]} (see protocol::authentication).
    ALTER TABLE authorization_codes ADD COLUMN authentication TEXT;
    ALTER TABLE token_families ADD COLUMN authentication TEXT;
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

    /// Runs `f` in an IMMEDIATE transaction, committed when `f` returns `Ok` (even an
    /// `Ok` that carries a refusal: a refusal may have revoked tokens) and rolled back
    /// otherwise. Blocks: call from a blocking thread.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut conn = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
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

//! Refresh tokens and their families (RFC 6749 §6, RFC 9700 §4.14).
//!
//! A family is one authorization grant: the refresh tokens rotated, one from the other,
//! since the authorization code was redeemed. Tokens are opaque (`tgr_` and 256 random
//! bits), stored as SHA-256 digests, and rotated on every use. Presenting a rotated
//! token again means two parties hold the family, so the whole family is revoked,
//! together with the access tokens issued in it (they go to the revocation feed).
//! A family dies when its current token idles past the idle lifetime or the family
//! reaches its absolute lifetime.
//!
//! Tokens belong to generations: the family's current generation is the one that may be
//! exchanged. Exchanging a current token retires its whole generation and starts the
//! next. The grace window (`--refresh-reuse-grace`) is for a client that lost a response
//! or retried: for that long after its generation was retired, a token of the previous
//! generation may be exchanged again, which adds a token to the current generation
//! instead of revoking the family. Once any token of the current generation has been
//! exchanged, or the window has passed, presenting an old token is reuse again. So the
//! family stays one chain: two parties holding it are still found out, at the latest
//! when one of them presents a token the other's exchange retired.

use rusqlite::{params, Connection, OptionalExtension as _};

use crate::crypto::opaque;
use crate::protocol::scope::ScopeSet;
use crate::storage::issued_tokens;

/// Marks refresh tokens, so that `/revoke` and `/introspect` know what they hold and
/// secret scanners can spot leaked ones.
pub const PREFIX: &str = "tgr_";
const TOKEN_BYTES: usize = 32;
/// Dead families are kept this long (at least the longest access-token lifetime), so
/// that a replayed code or refresh token can still revoke the access tokens issued
/// from them.
const RETENTION_SECS: i64 = 86_400;

/// Refresh-token lifetimes in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Since the token was issued (each rotation starts a new period).
    pub idle: i64,
    /// Since the grant started; rotation does not extend it.
    pub absolute: i64,
}

/// A family as found through one of its tokens.
#[derive(Debug)]
pub struct Family {
    pub family_id: i64,
    pub client_id: String,
    pub user_id: String,
    /// The scope the user granted.
    pub scopes: ScopeSet,
    /// When the current token stops working.
    pub idle_expires_at: i64,
    pub revoked: bool,
    /// The generation whose tokens may be exchanged.
    pub generation: i64,
    /// The DPoP key (RFC 7638 thumbprint) every refresh must prove, for a public
    /// client's grant started with a DPoP proof (RFC 9449 §5).
    pub dpop_jkt: Option<String>,
}

impl Family {
    /// Whether the family's current token may still be exchanged at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        !self.revoked && self.idle_expires_at > now
    }
}

/// A presented refresh token and its family.
#[derive(Debug)]
pub struct Presented {
    pub family: Family,
    pub issued_at: i64,
    pub generation: i64,
    /// When its generation was retired (exchanged for a newer one); presenting it
    /// again is reuse, unless it is a retry within the grace window.
    pub rotated_at: Option<i64>,
}

impl Presented {
    pub fn is_current(&self) -> bool {
        self.rotated_at.is_none()
    }

    /// Whether presenting this retired token at `now` is a retry of its exchange: it
    /// is of the generation just retired, less than `grace` seconds ago (so a grace of
    /// 0 allows none).
    pub fn is_retry(&self, grace: i64, now: i64) -> bool {
        self.rotated_at.is_some_and(|rotated_at| {
            self.generation + 1 == self.family.generation && now - rotated_at < grace
        })
    }
}

/// Starts a family for a redeemed authorization code; returns its id and first token.
pub fn start_family(
    conn: &Connection,
    client_id: &str,
    user_id: &str,
    scopes: &ScopeSet,
    lifetimes: Lifetimes,
    now: i64,
) -> rusqlite::Result<(i64, String)> {
    let absolute_expires_at = now.saturating_add(lifetimes.absolute);
    conn.execute(
        "INSERT INTO token_families
             (client_id, user_id, scopes, created_at, idle_expires_at, absolute_expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            client_id,
            user_id,
            scopes.to_string(),
            now,
            idle_expiry(lifetimes, now, absolute_expires_at),
            absolute_expires_at
        ],
    )?;
    let family_id = conn.last_insert_rowid();
    let token = insert_token(conn, family_id, 0, now)?;
    Ok((family_id, token))
}

/// Binds the family to a DPoP key: from now on each refresh must prove it.
pub fn bind_to_dpop_key(conn: &Connection, family_id: i64, jkt: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE token_families SET dpop_jkt = ?2 WHERE family_id = ?1",
        params![family_id, jkt],
    )?;
    Ok(())
}

/// Looks a refresh token up by its digest.
pub fn find(conn: &Connection, token: &str) -> rusqlite::Result<Option<Presented>> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    let row = conn
        .prepare_cached(
            "SELECT f.family_id, f.client_id, f.user_id, f.scopes,
                    f.idle_expires_at, f.revoked_at IS NOT NULL, f.generation,
                    t.issued_at, t.generation, t.rotated_at, f.dpop_jkt
             FROM refresh_tokens t
             JOIN token_families f USING (family_id)
             WHERE t.token_hash = ?1",
        )?
        .query_row([opaque::digest(token)], |row| {
            Ok((
                Family {
                    family_id: row.get(0)?,
                    client_id: row.get(1)?,
                    user_id: row.get(2)?,
                    scopes: ScopeSet::default(),
                    idle_expires_at: row.get(4)?,
                    revoked: row.get(5)?,
                    generation: row.get(6)?,
                    dpop_jkt: row.get(10)?,
                },
                row.get::<_, String>(3)?,
                row.get(7)?,
                row.get(8)?,
                row.get(9)?,
            ))
        })
        .optional()?;
    row.map(|(mut family, scopes, issued_at, generation, rotated_at)| {
        family.scopes = scopes.parse().map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(err))
        })?;
        Ok(Presented {
            family,
            issued_at,
            generation,
            rotated_at,
        })
    })
    .transpose()
}

/// Exchanges a current token of `family` for a new one: retires the current generation
/// (the token and any siblings) and starts the next, with a new idle period (never past
/// the absolute lifetime). Call inside a transaction, after [`find`] showed the token
/// current and its family live.
pub fn rotate(
    conn: &Connection,
    family: &Family,
    lifetimes: Lifetimes,
    now: i64,
) -> rusqlite::Result<String> {
    conn.execute(
        "UPDATE refresh_tokens SET rotated_at = ?3
         WHERE family_id = ?1 AND generation = ?2 AND rotated_at IS NULL",
        params![family.family_id, family.generation, now],
    )?;
    conn.execute(
        "UPDATE token_families SET generation = generation + 1 WHERE family_id = ?1",
        [family.family_id],
    )?;
    reissue_in(
        conn,
        family.family_id,
        family.generation + 1,
        lifetimes,
        now,
    )
}

/// Answers a retry within the grace window: one more token of the current generation,
/// with a new idle period. The family is not otherwise changed.
pub fn reissue(
    conn: &Connection,
    family: &Family,
    lifetimes: Lifetimes,
    now: i64,
) -> rusqlite::Result<String> {
    reissue_in(conn, family.family_id, family.generation, lifetimes, now)
}

fn reissue_in(
    conn: &Connection,
    family_id: i64,
    generation: i64,
    lifetimes: Lifetimes,
    now: i64,
) -> rusqlite::Result<String> {
    let absolute_expires_at: i64 = conn.query_row(
        "SELECT absolute_expires_at FROM token_families WHERE family_id = ?1",
        [family_id],
        |row| row.get(0),
    )?;
    conn.execute(
        "UPDATE token_families SET idle_expires_at = ?2 WHERE family_id = ?1",
        params![family_id, idle_expiry(lifetimes, now, absolute_expires_at)],
    )?;
    insert_token(conn, family_id, generation, now)
}

/// Revokes the family: none of its refresh tokens works any more, and its unexpired
/// access tokens join the revocation feed.
pub fn revoke_family(conn: &Connection, family_id: i64, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE token_families SET revoked_at = ?2 WHERE family_id = ?1 AND revoked_at IS NULL",
        params![family_id, now],
    )?;
    issued_tokens::revoke_of_family(conn, family_id, now)
}

/// Revokes every live family of the client (when the client is disabled).
pub fn revoke_families_of_client(
    conn: &Connection,
    client_id: &str,
    now: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE token_families SET revoked_at = ?2 WHERE client_id = ?1 AND revoked_at IS NULL",
        params![client_id, now],
    )?;
    Ok(())
}

/// Deletes families dead for longer than the retention period (with their tokens and
/// codes). Returns the number of families deleted.
pub fn prune(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM token_families WHERE idle_expires_at <= ?1",
        [now.saturating_sub(RETENTION_SECS)],
    )
}

fn idle_expiry(lifetimes: Lifetimes, now: i64, absolute_expires_at: i64) -> i64 {
    now.saturating_add(lifetimes.idle).min(absolute_expires_at)
}

fn insert_token(
    conn: &Connection,
    family_id: i64,
    generation: i64,
    now: i64,
) -> rusqlite::Result<String> {
    let token = format!("{PREFIX}{}", opaque::random(TOKEN_BYTES));
    conn.prepare_cached(
        "INSERT INTO refresh_tokens (token_hash, family_id, generation, issued_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![opaque::digest(&token), family_id, generation, now])?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::clients::{self, Client, ClientType};
    use crate::storage::users::{self, User};

    const LIFETIMES: Lifetimes = Lifetimes {
        idle: 100,
        absolute: 250,
    };

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::storage::db::open(&dir.path().join("store.db")).expect("open");
        let client = Client {
            client_id: "app".to_owned(),
            client_type: ClientType::Public,
            secret_hash: None,
            scopes: "read write".parse().expect("scopes"),
            default_scopes: ScopeSet::default(),
            created_at: 0,
            disabled_at: None,
        };
        clients::insert(&conn, &client, &[]).expect("client");
        let user = User {
            user_id: "u1".to_owned(),
            username: "alice".to_owned(),
            password_hash: "$argon2id$placeholder".to_owned(),
            scopes: ScopeSet::default(),
            created_at: 0,
        };
        users::insert(&conn, &user).expect("user");
        (dir, conn)
    }

    fn revoked_jtis(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT jti FROM revoked_access_tokens ORDER BY jti")
            .expect("prepare")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn rotation_keeps_the_absolute_lifetime_and_marks_the_old_token() {
        let (_dir, conn) = store();
        let scopes: ScopeSet = "read".parse().expect("scopes");
        let (family_id, first) =
            start_family(&conn, "app", "u1", &scopes, LIFETIMES, 1_000).expect("start");
        assert!(first.starts_with(PREFIX) && first.len() == PREFIX.len() + 43);

        let presented = find(&conn, &first).expect("find").expect("known");
        assert!(presented.is_current());
        assert_eq!(presented.family.family_id, family_id);
        assert_eq!(presented.family.user_id, "u1");
        assert_eq!(presented.family.scopes, scopes);
        assert_eq!(presented.family.idle_expires_at, 1_100);
        assert!(presented.family.is_live(1_099));
        assert!(!presented.family.is_live(1_100));

        let second = rotate(&conn, &presented.family, LIFETIMES, 1_090).expect("rotate");
        let old = find(&conn, &first).expect("find").expect("known");
        assert_eq!(old.rotated_at, Some(1_090));
        let current = find(&conn, &second).expect("find").expect("known");
        assert!(current.is_current());
        assert_eq!(current.issued_at, 1_090);
        assert_eq!(current.family.idle_expires_at, 1_190);

        let third = rotate(&conn, &current.family, LIFETIMES, 1_180).expect("rotate");
        let current = find(&conn, &third).expect("find").expect("known");
        assert_eq!(
            current.family.idle_expires_at, 1_250,
            "capped by the absolute lifetime"
        );

        assert!(find(&conn, "tgr_unknown").expect("find").is_none());
        assert!(find(&conn, "not-a-refresh-token").expect("find").is_none());
    }

    #[test]
    fn only_the_generation_just_retired_may_retry_and_only_within_the_grace() {
        let (_dir, conn) = store();
        let scopes = ScopeSet::default();
        let (_, first) =
            start_family(&conn, "app", "u1", &scopes, LIFETIMES, 1_000).expect("start");
        let family = find(&conn, &first).expect("find").expect("known").family;
        let second = rotate(&conn, &family, LIFETIMES, 1_010).expect("rotate");

        // The first token again, 5 s after its exchange: a retry, with a grace of 10 s.
        let retried = find(&conn, &first).expect("find").expect("known");
        assert!(retried.is_retry(10, 1_015));
        assert!(!retried.is_retry(10, 1_021), "past the grace");
        assert!(!retried.is_retry(10, 1_020), "the grace is over");
        assert!(!retried.is_retry(0, 1_010), "no grace, not even at once");
        let sibling = reissue(&conn, &retried.family, LIFETIMES, 1_015).expect("reissue");
        let sibling_presented = find(&conn, &sibling).expect("find").expect("known");
        assert!(sibling_presented.is_current());
        assert!(find(&conn, &second)
            .expect("find")
            .expect("known")
            .is_current());

        // Exchanging one of the siblings retires both; the first token is now two
        // generations old: reuse, grace or not.
        let third = rotate(&conn, &sibling_presented.family, LIFETIMES, 1_016).expect("rotate");
        let other_sibling = find(&conn, &second).expect("find").expect("known");
        assert_eq!(other_sibling.rotated_at, Some(1_016));
        assert!(
            other_sibling.is_retry(10, 1_020),
            "the generation just retired"
        );
        assert!(!find(&conn, &first)
            .expect("find")
            .expect("known")
            .is_retry(10, 1_017));
        assert!(find(&conn, &third)
            .expect("find")
            .expect("known")
            .is_current());
    }

    #[test]
    fn revoking_a_family_revokes_its_live_access_tokens() {
        let (_dir, conn) = store();
        let scopes = ScopeSet::default();
        let (family_id, token) =
            start_family(&conn, "app", "u1", &scopes, LIFETIMES, 1_000).expect("start");
        issued_tokens::record(&conn, "live", "app", Some(family_id), 2_000).expect("record");
        issued_tokens::record(&conn, "expired", "app", Some(family_id), 1_050).expect("record");
        let (other, _) =
            start_family(&conn, "app", "u1", &scopes, LIFETIMES, 1_000).expect("start");
        issued_tokens::record(&conn, "other", "app", Some(other), 2_000).expect("record");

        revoke_family(&conn, family_id, 1_060).expect("revoke");
        revoke_family(&conn, family_id, 1_070).expect("revoking twice is harmless");
        assert!(
            find(&conn, &token)
                .expect("find")
                .expect("known")
                .family
                .revoked
        );
        assert_eq!(revoked_jtis(&conn), ["live"]);
    }

    #[test]
    fn removing_a_user_revokes_their_access_tokens() {
        let (_dir, conn) = store();
        let (family_id, token) =
            start_family(&conn, "app", "u1", &ScopeSet::default(), LIFETIMES, 1_000)
                .expect("start");
        issued_tokens::record(&conn, "jti-1", "app", Some(family_id), 2_000).expect("record");
        assert!(users::remove(&conn, "alice", 1_010).expect("remove"));
        assert_eq!(revoked_jtis(&conn), ["jti-1"]);
        assert!(
            find(&conn, &token).expect("find").is_none(),
            "grants are gone"
        );
    }

    #[test]
    fn prune_keeps_dead_families_for_the_retention_period() {
        let (_dir, conn) = store();
        let (family_id, token) =
            start_family(&conn, "app", "u1", &ScopeSet::default(), LIFETIMES, 1_000)
                .expect("start");
        issued_tokens::record(&conn, "jti-1", "app", Some(family_id), 1_900).expect("record");
        assert_eq!(prune(&conn, 1_100 + RETENTION_SECS - 1).expect("prune"), 0);
        assert!(find(&conn, &token).expect("find").is_some());
        assert_eq!(prune(&conn, 1_100 + RETENTION_SECS).expect("prune"), 1);
        assert!(find(&conn, &token).expect("find").is_none());
    }
}

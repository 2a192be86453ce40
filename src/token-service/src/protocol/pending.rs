//! Authorization requests waiting for the user to log in and decide: validated by
//! `GET /authorize`, held in memory under a random id that the login form carries
//! back, and consumed by `POST /authorize`.
//!
//! The id is the form's anti-CSRF token: a POST must name a request this server
//! validated and rendered, and what is approved is what was validated, whatever else
//! the POST says. Records live ten minutes and their number is bounded.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::crypto::opaque;
use crate::protocol::scope::ScopeSet;

/// Time a user has to log in.
const LIFETIME: Duration = Duration::from_secs(600);
/// Most requests held; beyond this, the one closest to expiry makes room.
const MAX_PENDING: usize = 10_000;

/// A validated authorization request.
#[derive(Debug, Clone)]
pub struct PendingAuthorization {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: ScopeSet,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
}

/// A request taken out for a decision; give it back if the login fails.
pub struct Taken {
    pub id: String,
    pub authorization: PendingAuthorization,
    expires: Instant,
}

#[derive(Default)]
pub struct PendingAuthorizations(Mutex<HashMap<String, (PendingAuthorization, Instant)>>);

impl PendingAuthorizations {
    /// Holds `authorization` and returns its id (128 random bits).
    pub fn insert(&self, authorization: PendingAuthorization, now: Instant) -> String {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING {
            pending.retain(|_, (_, expires)| *expires > now);
        }
        if pending.len() >= MAX_PENDING {
            let soonest = pending
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(id, _)| id.clone());
            if let Some(id) = soonest {
                pending.remove(&id);
            }
        }
        let id = opaque::random(16);
        pending.insert(id.clone(), (authorization, now + LIFETIME));
        id
    }

    /// Removes and returns the request `id`, unless it is unknown or expired.
    pub fn take(&self, id: &str, now: Instant) -> Option<Taken> {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (authorization, expires) = pending.remove(id)?;
        (expires > now).then(|| Taken {
            id: id.to_owned(),
            authorization,
            expires,
        })
    }

    /// Holds a taken request again, with its original expiry.
    pub fn put_back(&self, taken: Taken) {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pending.insert(taken.id, (taken.authorization, taken.expires));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client_id: &str) -> PendingAuthorization {
        PendingAuthorization {
            client_id: client_id.to_owned(),
            redirect_uri: "com.example.app:/cb".to_owned(),
            scopes: ScopeSet::default(),
            state: Some("xyz".to_owned()),
            code_challenge: None,
        }
    }

    #[test]
    fn take_is_single_use_until_put_back() {
        let pending = PendingAuthorizations::default();
        let now = Instant::now();
        let id = pending.insert(request("app"), now);
        assert!(id.len() >= 22);
        let taken = pending.take(&id, now).expect("pending");
        assert_eq!(taken.authorization.client_id, "app");
        assert!(pending.take(&id, now).is_none(), "single use");
        pending.put_back(taken);
        assert!(pending.take(&id, now).is_some(), "given back");
        assert!(pending.take("unknown", now).is_none());
    }

    #[test]
    fn requests_expire() {
        let pending = PendingAuthorizations::default();
        let now = Instant::now();
        let id = pending.insert(request("app"), now);
        assert!(pending.take(&id, now + LIFETIME).is_none());
    }

    #[test]
    fn the_number_held_is_bounded() {
        let pending = PendingAuthorizations::default();
        let now = Instant::now();
        let first = pending.insert(request("first"), now);
        for index in 0..MAX_PENDING {
            pending.insert(
                request("later"),
                now + Duration::from_millis(1 + index as u64),
            );
        }
        assert_eq!(pending.0.lock().expect("lock").len(), MAX_PENDING);
        assert!(pending.take(&first, now).is_none(), "the oldest made room");
    }
}

//! Live tokens kept in memory by a server replica on PostgreSQL, so that a request costs no
//! round trip to the database for its token.
//!
//! A token is only ever kept while revocations are heard: a thread of its own listens on
//! [`REVOKED_CHANNEL`], on which `Tokens::revoke` notifies in the transaction that revokes
//! (the notification is delivered when it commits), and forgets
//! every kept token at each notification, and whenever its listening connection is lost or
//! opened again (revocations may have gone unheard meanwhile). So a revoked token is refused
//! by every replica as soon as the notification arrives, within milliseconds; if it never
//! arrives (a connection that died without a word), each kept token is read again after
//! [`KEPT_FOR`] anyway.
//!
//! A lookup that races a revocation cannot keep the revoked token: it notes the cache's
//! generation before reading the database and keeps what it read only if no revocation was
//! heard since. Unknown and revoked tokens are never kept. On SQLite nothing is kept: a
//! revocation there is a write to a file that no one announces, and reading the token
//! costs no round trip.
//!
//! What this module does not do: decide what a token may do (`auth.rs`) or read the token
//! table (`store`).

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use postgres::NoTls;
use postgres::fallible_iterator::FallibleIterator;

use crate::auth::Principal;

/// The channel `Tokens::revoke` notifies on, in the transaction of the revocation.
pub(crate) const REVOKED_CHANNEL: &str = "converge_tokens_revoked";

/// How long a token is kept at most, even when no revocation is heard.
pub(crate) const KEPT_FOR: Duration = Duration::from_secs(5);

/// Most tokens kept at once; when full, every kept token is forgotten and the cache fills
/// again from the lookups that follow.
pub(crate) const KEPT_MAX: usize = 10_000;

/// How long the listening thread waits for a notification before it checks whether its
/// server is gone.
const LISTEN_TURN: Duration = Duration::from_millis(500);

/// How long the listening thread waits before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The tokens a replica keeps, with what decides whether it may.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Whether revocations are heard now: nothing is kept otherwise.
    hearing: bool,
    /// Bumped whenever kept tokens are forgotten.
    generation: u64,
    kept: HashMap<[u8; 32], (Principal, Instant)>,
}

impl TokenCache {
    /// The principal of a kept, live token.
    pub(crate) fn get(&self, hash: &[u8; 32]) -> Option<Principal> {
        let state = lock(&self.state);
        let (principal, since) = state.kept.get(hash)?;
        (state.hearing && since.elapsed() < KEPT_FOR).then(|| principal.clone())
    }

    /// What a lookup notes before it reads the database: `None` when nothing is kept now.
    pub(crate) fn generation(&self) -> Option<u64> {
        let state = lock(&self.state);
        state.hearing.then_some(state.generation)
    }

    /// Keeps a token read live from the database by a lookup that began at `generation`,
    /// unless kept tokens were forgotten since.
    pub(crate) fn keep(&self, hash: [u8; 32], principal: Principal, generation: u64) {
        let mut state = lock(&self.state);
        if !state.hearing || state.generation != generation {
            return;
        }
        if state.kept.len() >= KEPT_MAX {
            state.kept.clear();
        }
        state.kept.insert(hash, (principal, Instant::now()));
    }

    /// Forgets every kept token; `hearing` says whether revocations are heard from now on.
    pub(crate) fn forget_all(&self, hearing: bool) {
        let mut state = lock(&self.state);
        state.hearing = hearing;
        state.generation += 1;
        state.kept.clear();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves a map that is still whole.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the thread that hears revocations in the database `url` names and keeps `cache`
/// honest; it ends once `cache` is dropped.
pub(crate) fn hear_revocations(url: &str, cache: Weak<TokenCache>) -> std::io::Result<()> {
    let config = converge_runtime::postgres_client_config(url)
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    std::thread::Builder::new()
        .name("converge-tokens".to_owned())
        .spawn(move || {
            while cache.strong_count() > 0 {
                if let Err(error) = listen(&config, &cache) {
                    tracing::warn!(
                        "not hearing token revocations ({error}); every request reads its \
                         token from the database until they are heard again"
                    );
                }
                if let Some(cache) = cache.upgrade() {
                    cache.forget_all(false);
                }
                std::thread::sleep(RECONNECT_AFTER);
            }
        })
        .map(drop)
}

/// Listens until the connection fails or the cache is gone.
fn listen(config: &postgres::Config, cache: &Weak<TokenCache>) -> Result<(), postgres::Error> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {REVOKED_CHANNEL}"))?;
    // Heard from now on: whatever was revoked before is read from the database.
    match cache.upgrade() {
        Some(cache) => cache.forget_all(true),
        None => return Ok(()),
    }
    loop {
        let heard = client
            .notifications()
            .timeout_iter(LISTEN_TURN)
            .next()?
            .is_some();
        let Some(cache) = cache.upgrade() else {
            return Ok(());
        };
        if heard {
            cache.forget_all(true);
            // Others that arrived together need no second forgetting.
            let mut notifications = client.notifications();
            let mut pending = notifications.iter();
            while pending.next()?.is_some() {}
        }
        if client.is_closed() {
            cache.forget_all(false);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    /// A cache that hears revocations, and its generation.
    fn hearing() -> (TokenCache, u64) {
        let cache = TokenCache::default();
        cache.forget_all(true);
        let generation = cache.generation().expect("hearing");
        (cache, generation)
    }

    fn principal(name: &str) -> Principal {
        Principal {
            tenant: "acme".to_owned(),
            name: name.to_owned(),
            role: Role::Viewer,
        }
    }

    #[test]
    fn nothing_is_kept_while_revocations_are_not_heard() {
        let cache = TokenCache::default();
        assert_eq!(cache.generation(), None);
        cache.keep([1; 32], principal("sam"), 0);
        assert_eq!(cache.get(&[1; 32]), None);
    }

    #[test]
    fn a_kept_token_is_forgotten_at_a_revocation() {
        let (cache, generation) = hearing();
        cache.keep([1; 32], principal("sam"), generation);
        assert_eq!(cache.get(&[1; 32]), Some(principal("sam")));
        cache.forget_all(true);
        assert_eq!(cache.get(&[1; 32]), None);
    }

    #[test]
    fn a_lookup_that_raced_a_revocation_keeps_nothing() {
        let (cache, before) = hearing();
        // The revocation is heard while the lookup reads the database.
        cache.forget_all(true);
        cache.keep([1; 32], principal("sam"), before);
        assert_eq!(cache.get(&[1; 32]), None);
    }

    #[test]
    fn a_lost_listener_stops_every_kept_token_at_once() {
        let (cache, generation) = hearing();
        cache.keep([1; 32], principal("sam"), generation);
        cache.forget_all(false);
        assert_eq!(cache.get(&[1; 32]), None);
        assert_eq!(cache.generation(), None);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_bound() {
        let (cache, generation) = hearing();
        for index in 0..=KEPT_MAX {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(index as u64).to_le_bytes());
            cache.keep(hash, principal("sam"), generation);
        }
        assert!(lock(&cache.state).kept.len() <= KEPT_MAX);
        let mut last = [0u8; 32];
        last[..8].copy_from_slice(&(KEPT_MAX as u64).to_le_bytes());
        assert_eq!(cache.get(&last), Some(principal("sam")));
    }
}

//! The layers' hot path: a token that may be sent as it is, read without waiting.

use std::time::SystemTime;

use super::RefreshCoordinator;
use crate::key::AuthKey;
use crate::token::{TokenSet, TokenStamp};

/// A token the hot path may send as it is (see [`RefreshCoordinator::token_now`]).
pub(crate) struct ServableToken {
    /// `Bearer <access token>` (`None`: not a valid header value).
    pub(crate) header: Option<http::HeaderValue>,
    pub(crate) stamp: TokenStamp,
    /// The time read to tell it is still valid (none for a token without expiry): the
    /// coarse clock's, which may trail by some milliseconds, while the refresh-ahead
    /// instant is more than a second away.
    pub(crate) now: Option<SystemTime>,
}

impl RefreshCoordinator {
    /// The hot path of [`token`](Self::token): the stored token if it can be had
    /// without waiting (the read cache of a shared store, or an in-memory store) and is
    /// valid and not yet due for refresh. `None` means: ask [`token`](Self::token).
    /// Read in place where the store allows: a request takes no reference to the
    /// token set. The clock is the coarse one while the refresh-ahead instant is
    /// more than a second away.
    pub(crate) fn token_now(&self, key: &AuthKey) -> Option<ServableToken> {
        let (config, rule) = (&self.inner.config, self.inner.serve_rule);
        let servable = |tokens: &TokenSet| {
            // The header first: with many keys, its reference count (a cache miss of
            // its own) then overlaps the instant's check (measured).
            let header = tokens.bearer_header();
            let now = match tokens.serve_until(rule, |tokens| config.serve_until(tokens)) {
                Some(until) => Some(now_if_before(until)?),
                None => None,
            };
            Some(ServableToken {
                header,
                stamp: tokens.stamp(),
                now,
            })
        };
        match &self.inner.hot {
            Some(hot) => servable(&*hot.get(key)?),
            None => {
                // The expiry is checked by `serve_until`.
                let mut found = None;
                let store = &self.inner.store;
                let read = &mut |tokens: Option<&TokenSet>| found = tokens.and_then(servable);
                if !store.peek_now_unchecked_expiry(key, read) {
                    return None;
                }
                found
            }
        }
    }
}

/// The time now if it is before `until`: the coarse clock's while `until` is far, the
/// precise one near it.
fn now_if_before(until: SystemTime) -> Option<SystemTime> {
    let coarse = crate::limits::coarse_now();
    let far = coarse
        .checked_add(crate::limits::COARSE_GUARD)
        .is_some_and(|guarded| guarded < until);
    let now = if far { coarse } else { SystemTime::now() };
    (now < until).then_some(now)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::store::{CredentialStore, MemoryStore};
    use crate::{AuthKey, Principal, RefreshConfig, RefreshCoordinator, Secret, TokenSet};

    /// Coordinators over one store cache until when a token set may be served in the
    /// token set itself: one with the same configuration reuses the answer, one with
    /// another configuration never does.
    #[tokio::test]
    async fn coordinators_share_the_serve_until_instant_only_when_their_rules_agree() {
        let store = Arc::new(MemoryStore::new());
        let key = AuthKey::new(
            &Principal::new("acme", "alice"),
            crate::key::BindingId([1; 32]),
        );
        // 100 s left of 1000: served by default (refreshed at most ~92 s ahead), due
        // under a 200 s clock-skew allowance.
        let mut tokens = TokenSet::new(Secret::new("access"));
        tokens.obtained_at = SystemTime::now() - Duration::from_secs(900);
        tokens.expires_at = Some(tokens.obtained_at + Duration::from_secs(1000));
        store.compare_and_swap(&key, None, tokens).await.unwrap();
        let default = RefreshCoordinator::new(store.clone());
        let skewed = RefreshCoordinator::builder(store.clone())
            .config(RefreshConfig::default().with_clock_skew(Duration::from_secs(200)))
            .build();

        assert!(default.token_now(&key).is_some());
        assert!(
            skewed.token_now(&key).is_none(),
            "reused another rule's answer"
        );
        assert!(default.token_now(&key).is_some());

        let stored = store.load(&key).await.unwrap().unwrap();
        let rule = RefreshCoordinator::new(store.clone()).inner.serve_rule;
        let computed = std::sync::atomic::AtomicUsize::new(0);
        let until = stored.serve_until(rule, |_| {
            computed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        });
        assert_eq!(
            computed.into_inner(),
            0,
            "a coordinator with the same rule recomputed"
        );
        assert!(until.is_some_and(|until| until > SystemTime::now()));
    }
}

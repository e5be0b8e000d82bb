//! The cooldown of a key whose redemptions fail: which callers it answers at once,
//! how long it lasts, and the counters a status page reads.

use super::*;

#[derive(Clone)]
pub(super) struct Cooldown {
    pub(super) generation: Generation,
    pub(super) until: Instant,
    pub(super) failures: u32,
    pub(super) error: Error,
    /// The failure was a refresh ahead of expiry: it holds back other refreshes ahead
    /// of expiry, not the first call that needs a new token.
    pub(super) ahead: bool,
}

/// Why a redemption runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Need {
    /// Ahead of expiry, in the background: the current token still serves.
    Ahead,
    /// A caller needs a new token now.
    Now,
}

impl RefreshCoordinator {
    pub(super) fn cooling_down(
        &self,
        key: &AuthKey,
        generation: Generation,
        need: Need,
    ) -> Option<Error> {
        let cooldown = self.inner.cooldowns.get(key)?;
        let now = Instant::now();
        if cooldown.generation != generation || now >= cooldown.until {
            return None;
        }
        // A failure ahead of expiry (a reset, a 5xx) must not fail the calls that need
        // a new token later: the first of them tries once; its failure, if any, cools
        // the key down for everyone.
        if cooldown.ahead && need == Need::Now {
            return None;
        }
        self.inner
            .counters
            .cooled_down
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::count(crate::metrics::REFRESH_COOLDOWN_ANSWERS);
        Some(match cooldown.error {
            Error::Transient {
                reason,
                www_authenticate,
                ..
            } => Error::Transient {
                reason: match reason {
                    TransientReason::CoolingDown(_) => reason,
                    other => TransientReason::CoolingDown(Box::new(other)),
                },
                retry_after: Some(cooldown.until - now),
                www_authenticate,
            },
            other => other,
        })
    }

    /// How long `key` is still cooling down after failed redemptions (`None`: it is
    /// not): refreshing is failing for this user, and a status page can say so.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_mcp_auth::{store::MemoryStore, AuthKey, Principal, RefreshCoordinator, ServerBinding};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let binding = ServerBinding::public_client(
    ///     "https://mcp.example.com/mcp",
    ///     "https://auth.example.com/token",
    ///     "my-client",
    /// )?;
    /// let coordinator = RefreshCoordinator::new(Arc::new(MemoryStore::new()));
    /// let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    /// assert_eq!(coordinator.cooldown_remaining(&key), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn cooldown_remaining(&self, key: &AuthKey) -> Option<Duration> {
        let cooldown = self.inner.cooldowns.get(key)?;
        cooldown.until.checked_duration_since(Instant::now())
    }

    /// Starts or clears the key's cooldown after a redemption of `trigger`.
    pub(super) fn record(&self, key: &AuthKey, trigger: Generation, outcome: &Outcome, need: Need) {
        let cooldowns = &self.inner.cooldowns;
        let label = match outcome {
            Ok(_) => Some("refreshed"),
            Err(Error::ReauthRequired {
                reason: ReauthReason::InvalidGrant,
                ..
            }) => Some("invalid_grant"),
            // No request was sent for these.
            Err(Error::ReauthRequired {
                reason: ReauthReason::NoCredentials | ReauthReason::NoRefreshToken,
                ..
            })
            | Err(Error::Transient {
                reason: TransientReason::CoolingDown(_),
                ..
            }) => None,
            Err(Error::ReauthRequired { .. }) => Some("reauth_required"),
            Err(_) => Some("failed"),
        };
        if let Some(label) = label {
            crate::metrics::count_with(crate::metrics::REFRESH_OUTCOMES, "outcome", label);
        }
        let error = match outcome {
            Ok(_) => return cooldowns.invalidate(key),
            // Nothing left to redeem: later callers fail fast without any cooldown.
            Err(Error::ReauthRequired {
                reason:
                    ReauthReason::InvalidGrant
                    | ReauthReason::NoCredentials
                    | ReauthReason::NoRefreshToken,
                ..
            }) => return,
            // Answered from the cooldown without an attempt: nothing new to record.
            Err(Error::Transient {
                reason: TransientReason::CoolingDown(_),
                ..
            }) => return,
            Err(error) => error,
        };
        let failures = cooldowns
            .get(key)
            .filter(|c| c.generation == trigger)
            .map_or(1, |c| c.failures + 1);
        let retry_after = match error {
            Error::Transient { retry_after, .. } => *retry_after,
            _ => None,
        };
        let wait = self.inner.config.cooldown_after(failures, retry_after);
        debug!(?wait, failures, "cooling down");
        crate::metrics::count(crate::metrics::REFRESH_COOLDOWNS);
        cooldowns.insert(
            key.clone(),
            Cooldown {
                generation: trigger,
                until: crate::limits::instant_after(Instant::now(), wait),
                failures,
                error: error.clone(),
                ahead: need == Need::Ahead,
            },
        );
    }
}

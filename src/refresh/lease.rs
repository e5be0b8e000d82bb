//! The cross-process tier: a shared store's redemption lease, taken by the process whose
//! local flight leads; the other processes wait for the holder's write.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use super::config::{LEASE_RENEWAL, LEASE_TTL};
use super::{Outcome, RefreshCoordinator};
use crate::error::Error;
use crate::fault::ReauthReason;
use crate::key::AuthKey;
use crate::store::{Lease, LeaseOutcome};
use crate::token::TokenSet;

/// How often a process waiting on another process's lease tries it again: the try
/// sees the holder's write, its release (a failed redemption) and its expiry (a dead
/// holder stops renewing) alike.
const LEASE_POLL: Duration = Duration::from_millis(25);

/// Renews a held lease every [`LEASE_RENEWAL`] until dropped (with the redemption that
/// holds it: finished, timed out, panicked or its process killed alike).
pub(super) struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What taking the shared store's lease came to.
pub(super) enum Leased {
    /// This process redeems `TokenSet` (the generation the lease was taken on).
    Acquired(Lease, Arc<TokenSet>),
    /// Another process settled it: its result.
    Settled(Outcome),
}

impl RefreshCoordinator {
    /// Takes the shared store's lease to redeem `current`, or waits for the process
    /// holding it and returns what it stored.
    pub(super) async fn lease(
        &self,
        key: &AuthKey,
        mut current: Arc<TokenSet>,
    ) -> Result<Leased, Error> {
        let store = &self.inner.store;
        let ttl = self.inner.config.lease_ttl();
        loop {
            match store
                .acquire_lease(key, current.generation, ttl)
                .await
                .map_err(Error::Store)?
            {
                LeaseOutcome::Acquired(lease) => return Ok(Leased::Acquired(lease, current)),
                LeaseOutcome::Superseded(None) => {
                    return Ok(Leased::Settled(Err(Error::reauth(
                        ReauthReason::NoCredentials,
                    ))));
                }
                LeaseOutcome::Superseded(Some(newer)) => {
                    if self.inner.config.usable(&newer, SystemTime::now()) {
                        debug!(stored = %newer.generation, "another process refreshed");
                        return Ok(Leased::Settled(Ok(newer)));
                    }
                    if newer.refresh_token.is_none() {
                        return Ok(Leased::Settled(Err(Error::reauth(
                            ReauthReason::NoRefreshToken,
                        ))));
                    }
                    // Newer, but expired too: that one is the token to redeem now.
                    current = newer;
                }
                LeaseOutcome::Held(left) => {
                    debug!(?left, "another process is redeeming; waiting for its write");
                    tokio::time::sleep(LEASE_POLL.min(left)).await;
                }
            }
        }
    }

    /// Keeps `lease` alive while this process redeems.
    pub(super) fn heartbeat(&self, key: &AuthKey, lease: Lease) -> Heartbeat {
        let store = self.inner.store.clone();
        let key = key.clone();
        Heartbeat(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(LEASE_RENEWAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                // A renewal that cannot finish before the next is due has failed: a
                // stalled store must not hold the heartbeat past the lease's life.
                let renewal = store.renew_lease(&key, lease, LEASE_TTL);
                match tokio::time::timeout(LEASE_RENEWAL, renewal).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        warn!(
                            "lost the refresh lease to another process; this redemption's write will be refused"
                        );
                        return;
                    }
                    Ok(Err(error)) => warn!(%error, "cannot renew the refresh lease"),
                    Err(_) => warn!("renewing the refresh lease timed out"),
                }
            }
        }))
    }
}

//! The cross-process tier: a shared store's redemption lease, taken by the process whose
//! local flight leads; the other processes wait for the holder's write.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::debug;

use super::{Outcome, RefreshCoordinator};
use crate::error::{Error, ReauthReason};
use crate::key::AuthKey;
use crate::store::{Lease, LeaseOutcome};
use crate::token::{Generation, TokenSet};

/// How often a process waiting on another process's lease looks for its write.
const LEASE_POLL: Duration = Duration::from_millis(25);

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
                    self.await_write(key, current.generation, left).await?;
                }
            }
        }
    }

    /// Polls the store until the generation moves past `generation` or `left` passes
    /// (the holder died: its lease expires and the next acquire takes over).
    async fn await_write(
        &self,
        key: &AuthKey,
        generation: Generation,
        left: Duration,
    ) -> Result<(), Error> {
        let until = Instant::now() + left.min(self.inner.config.lease_ttl());
        while Instant::now() < until {
            tokio::time::sleep(LEASE_POLL).await;
            let stored = self.inner.store.load(key).await.map_err(Error::Store)?;
            if stored.is_none_or(|t| t.generation != generation) {
                return Ok(());
            }
        }
        Ok(())
    }
}

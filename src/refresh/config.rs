//! Timeouts, cooldowns, the refresh-ahead margin and the clock-skew allowance.

use std::time::{Duration, SystemTime};

use crate::token::{ServeRule, TokenSet};

/// Timeouts, cooldowns and the refresh-ahead margin of a
/// [`RefreshCoordinator`](super::RefreshCoordinator).
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_auth::RefreshConfig;
///
/// let config = RefreshConfig::default()
///     .with_timeout(Duration::from_secs(10))
///     .with_cooldown(Duration::from_secs(2), Duration::from_secs(60));
/// assert_eq!(config.timeout(), Duration::from_secs(10));
/// ```
#[derive(Clone, Debug)]
pub struct RefreshConfig {
    pub(super) timeout: Duration,
    cooldown: Duration,
    pub(super) max_cooldown: Duration,
    min_margin: Duration,
    max_margin: Duration,
    clock_skew: Duration,
}

/// See [`RefreshConfig::lease_ttl`].
pub(crate) const LEASE_TTL: Duration = Duration::from_millis(2500);
/// How often the holder of a shared store's lease renews it.
pub(crate) const LEASE_RENEWAL: Duration = Duration::from_millis(500);

impl Default for RefreshConfig {
    /// 30 s redemption timeout; 5 s cooldown doubling up to 5 min; refresh ahead by 10%
    /// of the token's lifetime, at least 2 s and at most 60 s, plus up to half that
    /// again as jitter; a token counts as expired 1 s early (servers round `exp` down to
    /// the second and clocks differ). Margin and skew never take more than half of a
    /// short token's lifetime.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(300),
            min_margin: Duration::from_secs(2),
            max_margin: Duration::from_secs(60),
            clock_skew: Duration::from_secs(1),
        }
    }
}

impl RefreshConfig {
    /// The longest one redemption may take, end to end.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Cooldown after a failed redemption: `base`, doubling per consecutive failure,
    /// capped at `max`.
    pub fn with_cooldown(mut self, base: Duration, max: Duration) -> Self {
        self.cooldown = base;
        self.max_cooldown = max.max(base);
        self
    }

    /// The most a token is refreshed ahead of its expiry (default 60 s).
    pub fn with_max_margin(mut self, margin: Duration) -> Self {
        self.max_margin = margin;
        self.min_margin = self.min_margin.min(margin);
        self
    }

    /// The least a token is refreshed ahead of its expiry (default 2 s), whatever its
    /// lifetime; raise it for slow authorization servers or very short tokens.
    pub fn with_min_margin(mut self, margin: Duration) -> Self {
        self.min_margin = margin;
        self.max_margin = self.max_margin.max(margin);
        self
    }

    /// How much earlier than its stated expiry a token counts as expired (default 1 s):
    /// allowance for servers that round `exp` down and for clock differences.
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    /// The redemption timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a shared store's redemption lease lasts without renewal: a dead holder
    /// blocks the other processes this long at most, whatever the redemption timeout
    /// (2.5 s; its living holder renews it every 0.5 s, so a holder has to stall for
    /// 2 s before another process may take over).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_mcp_auth::RefreshConfig;
    ///
    /// let config = RefreshConfig::default().with_timeout(Duration::from_secs(30));
    /// assert!(config.lease_ttl() <= Duration::from_secs(3), "not tied to the timeout");
    /// ```
    pub fn lease_ttl(&self) -> Duration {
        LEASE_TTL
    }

    pub(super) fn cooldown_after(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .cooldown
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled
            .max(retry_after.unwrap_or_default())
            .min(self.max_cooldown)
    }

    /// When to start refreshing `tokens`: before expiry by the margin plus a jitter
    /// that is fixed per generation, so every request agrees on the instant.
    pub(super) fn refresh_at(&self, tokens: &TokenSet) -> Option<SystemTime> {
        let expires_at = tokens.expires_at?;
        let lifetime = tokens.lifetime()?;
        let margin = (lifetime / 10)
            .max(self.min_margin)
            .min(self.max_margin)
            .saturating_add(self.skew_for(lifetime));
        let jitter = margin.mul_f64(unit_hash(tokens.generation.0) / 2.0);
        // A short token keeps at least half its lifetime before refreshing starts.
        let ahead = (margin + jitter).min(lifetime / 2);
        Some(expires_at.checked_sub(ahead).unwrap_or(tokens.obtained_at))
    }

    /// The skew allowance for a token of `lifetime`: never more than a quarter of it,
    /// so a short token is still served for most of its life.
    fn skew_for(&self, lifetime: Duration) -> Duration {
        self.clock_skew.min(lifetime / 4)
    }

    /// What [`serve_until`](Self::serve_until) depends on besides the token set:
    /// coordinators whose configurations agree on it share one cached answer per token
    /// set (see [`TokenSet::serve_until`]).
    pub(super) fn serve_rule(&self) -> ServeRule {
        ServeRule {
            min_margin: self.min_margin,
            max_margin: self.max_margin,
            clock_skew: self.clock_skew,
        }
    }

    /// Until when `tokens` is usable and not yet due for refresh (`None`: no expiry):
    /// the hot path serves it without further checks before that instant.
    pub(super) fn serve_until(&self, tokens: &TokenSet) -> Option<SystemTime> {
        let expires_at = tokens.expires_at?;
        let skew = tokens
            .lifetime()
            .map_or(Duration::ZERO, |l| self.skew_for(l));
        let usable_until = expires_at.checked_sub(skew).unwrap_or(tokens.obtained_at);
        Some(match self.refresh_at(tokens) {
            Some(at) => at.min(usable_until),
            None => usable_until,
        })
    }

    /// Whether `tokens` may still be sent at `now`: before its expiry less the skew.
    pub(super) fn usable(&self, tokens: &TokenSet, now: SystemTime) -> bool {
        let skew = tokens
            .lifetime()
            .map_or(Duration::ZERO, |l| self.skew_for(l));
        tokens.is_usable_at(crate::limits::system_after(now, skew))
    }
}

/// A value in [0, 1) derived from `x` (splitmix64).
fn unit_hash(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Generation, Secret};

    #[test]
    fn serve_until_agrees_with_usable_and_refresh_at() {
        let config = RefreshConfig::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (lifetime, generation) in [
            (1u64, 1u64),
            (3, 2),
            (5, 3),
            (60, 4),
            (3600, 5),
            (86_400, 6),
        ] {
            let mut tokens = TokenSet::new(Secret::new("a"));
            tokens.obtained_at = start;
            tokens.expires_at = Some(start + Duration::from_secs(lifetime));
            tokens.generation = Generation(generation);
            let until = config.serve_until(&tokens).unwrap();
            for ms in (0..=lifetime * 1000).step_by(((lifetime * 1000) / 500).max(1) as usize) {
                let now = start + Duration::from_millis(ms);
                let slow = config.usable(&tokens, now)
                    && config.refresh_at(&tokens).is_none_or(|at| now < at);
                assert_eq!(now < until, slow, "lifetime {lifetime}s at {ms} ms");
            }
        }
        assert_eq!(config.serve_until(&TokenSet::new(Secret::new("a"))), None);
    }

    #[test]
    fn cooldown_doubles_honours_retry_after_and_caps() {
        let config =
            RefreshConfig::default().with_cooldown(Duration::from_secs(5), Duration::from_secs(60));
        let waits: Vec<u64> = (1..=6)
            .map(|n| config.cooldown_after(n, None).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(
            config
                .cooldown_after(1, Some(Duration::from_secs(30)))
                .as_secs(),
            30
        );
        assert_eq!(
            config
                .cooldown_after(1, Some(Duration::from_secs(999)))
                .as_secs(),
            60
        );
    }

    #[test]
    fn refresh_margin_is_bounded_by_lifetime_and_jittered() {
        let config = RefreshConfig::default();
        let mut tokens = TokenSet::new(Secret::new("a")).with_expires_in(Duration::from_secs(3600));
        let mut margins = Vec::new();
        for generation in 0..50 {
            tokens.generation = Generation(generation);
            let at = config.refresh_at(&tokens).unwrap();
            let margin = tokens.expires_at.unwrap().duration_since(at).unwrap();
            // 60 s margin + 1 s skew, plus up to half that as jitter.
            assert!(
                margin >= Duration::from_secs(61) && margin < Duration::from_millis(91_500),
                "{margin:?}"
            );
            margins.push(margin);
        }
        margins.dedup();
        assert!(margins.len() > 10, "jitter spreads refreshes");

        // Issue #11: a 5 s token got a 0.5-0.75 s margin and hundreds of 401s.
        let short = TokenSet::new(Secret::new("a")).with_expires_in(Duration::from_secs(5));
        let margin = short
            .expires_at
            .unwrap()
            .duration_since(config.refresh_at(&short).unwrap())
            .unwrap();
        assert_eq!(
            margin,
            Duration::from_millis(2500),
            "floor 2 s + skew, at most half"
        );
        assert!(config.usable(&short, short.obtained_at + Duration::from_millis(3900)));
        assert!(!config.usable(&short, short.obtained_at + Duration::from_millis(4000)));

        let tiny = TokenSet::new(Secret::new("a")).with_expires_in(Duration::from_secs(1));
        assert!(
            config.usable(&tiny, tiny.obtained_at),
            "never unusable from the start"
        );
    }
}

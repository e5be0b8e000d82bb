//! Thresholds and timings.

use std::time::Duration;

/// Thresholds and timings of a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_auth::BreakerConfig;
///
/// let config = BreakerConfig::default()
///     .with_consecutive_failures(3)
///     .with_open_backoff(Duration::from_millis(500), Duration::from_secs(2))
///     .with_max_throttle(Duration::from_secs(60))
///     .with_storm_guard(10, Duration::from_secs(60), Duration::from_secs(30));
/// # drop(config);
/// ```
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    pub(crate) consecutive_failures: u32,
    pub(crate) failure_rate: Option<FailureRate>,
    pub(crate) base_open: Duration,
    pub(crate) max_open: Duration,
    pub(crate) jitter: f64,
    pub(crate) probe_timeout: Duration,
    pub(crate) storm: Option<StormGuard>,
    pub(crate) default_throttle: Duration,
    pub(crate) max_throttle: Duration,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct FailureRate {
    pub(crate) threshold: f64,
    pub(crate) window: Duration,
    pub(crate) minimum_calls: usize,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct StormGuard {
    pub(crate) max_starts: usize,
    pub(crate) window: Duration,
    pub(crate) cooldown: Duration,
}

impl Default for BreakerConfig {
    /// Trip after 5 consecutive failures or a 50% failure rate over 30 s (at least 20
    /// calls); open for 250 ms doubling to 1 s (minus up to 10% jitter), so a dead
    /// upstream sees about one probe a second and a recovered one is back within a
    /// second; probes time out after 10 s; a 429 throttles its principal for its
    /// `Retry-After` (1 s without one, at most 5 min); more than 7 session starts in 45 s
    /// refuse further session starts for 15 s.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: Some(FailureRate {
                threshold: 0.5,
                window: Duration::from_secs(30),
                minimum_calls: 20,
            }),
            base_open: Duration::from_millis(250),
            max_open: Duration::from_secs(1),
            jitter: 0.1,
            probe_timeout: Duration::from_secs(10),
            storm: Some(StormGuard {
                max_starts: 7,
                window: Duration::from_secs(45),
                cooldown: Duration::from_secs(15),
            }),
            default_throttle: Duration::from_secs(1),
            max_throttle: Duration::from_secs(300),
        }
    }
}

impl BreakerConfig {
    /// Trip after `n` consecutive failures (at least 1).
    pub fn with_consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n.max(1);
        self
    }

    /// Trip when at least `threshold` (0..=1) of the calls in the last `window` failed,
    /// once the window holds `minimum_calls` calls.
    pub fn with_failure_rate(
        mut self,
        threshold: f64,
        window: Duration,
        minimum_calls: usize,
    ) -> Self {
        self.failure_rate = Some(FailureRate {
            threshold: threshold.clamp(0.0, 1.0),
            window,
            minimum_calls: minimum_calls.max(1),
        });
        self
    }

    /// Trip on consecutive failures only.
    pub fn without_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// The open period: `base`, doubling on every re-open, capped at `max` (default
    /// 250 ms to 1 s). The cap is the longest interval between half-open probes (a
    /// probe is one call), so it bounds both how long a recovered upstream waits and
    /// how often a dead one is tried.
    pub fn with_open_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_open = base;
        self.max_open = max.max(base);
        self
    }

    /// How much of each open period may be cut at random (0..=1; default 0.1), so that
    /// keys that opened together do not probe together.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// The longest `Retry-After` a 429 throttles its principal for (default 5 min).
    pub fn with_max_throttle(mut self, max: Duration) -> Self {
        self.max_throttle = max;
        self
    }

    /// How long a half-open probe may take before it counts as a failure.
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// More than `max_starts` session starts (JSON-RPC `initialize` requests, and
    /// responses that created a session) within `window` put the key into a `cooldown`
    /// during which further session starts fail fast; calls within a session, and to
    /// servers that keep no sessions, are never refused by it.
    pub fn with_storm_guard(
        mut self,
        max_starts: usize,
        window: Duration,
        cooldown: Duration,
    ) -> Self {
        self.storm = Some(StormGuard {
            max_starts,
            window,
            cooldown,
        });
        self
    }

    /// No storm guard.
    pub fn without_storm_guard(mut self) -> Self {
        self.storm = None;
        self
    }

    /// The open period after the `opens`-th consecutive open, before jitter.
    pub(crate) fn open_period(&self, opens: u32) -> Duration {
        let doubled = self
            .base_open
            .saturating_mul(1u32 << opens.saturating_sub(1).min(20));
        doubled.min(self.max_open)
    }

    pub(crate) fn jittered(&self, period: Duration) -> Duration {
        if self.jitter == 0.0 {
            return period;
        }
        let cut: f64 = crate::crypto::random_unit() * self.jitter;
        period.mul_f64(1.0 - cut)
    }
}

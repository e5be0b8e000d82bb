//! The per-key circuit breaker state machine behind
//! [`CircuitBreakerLayer`](crate::CircuitBreakerLayer): its configuration, states and
//! transitions. Knows nothing of Tower.
//!
//! Closed: calls pass; consecutive failures or a failure rate over a sliding window trip
//! it. Open: calls fail fast until the open period (exponential backoff with jitter,
//! doubling per re-open, capped at the probe interval) ends. Half-open: exactly one probe
//! at a time; success closes and resets, failure re-opens. Independently of the state,
//! too many session starts (JSON-RPC `initialize`, or a response that created a session)
//! in a window refuse further session starts for a cooldown (the reconnect storm guard,
//! `storm.rs`). 429 throttles are kept per principal by the layer, not here.
//!
//! - `config.rs`: [`BreakerConfig`]
//! - `machine.rs`: the closed / open / half-open machine of one key
//! - `storm.rs`: the session-start window

mod config;
mod machine;
mod storm;

pub use config::BreakerConfig;
pub(crate) use machine::{Admission, Breaker, Decision};

use std::time::Duration;

/// The state of one key's circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls pass.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe at a time decides.
    HalfOpen,
}

/// Why a call was refused without reaching the inner service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The circuit is open.
    #[error("circuit open")]
    Open,
    /// The circuit is half-open and its one probe is in flight.
    #[error("circuit half-open, probe in flight")]
    ProbeInFlight,
    /// The upstream answered 429; the key waits for its `Retry-After`.
    #[error("throttled after HTTP 429")]
    Throttled,
    /// Too many session starts in the storm window.
    #[error("reconnect storm cooldown")]
    StormCooldown,
    /// A half-open probe did not finish within the probe timeout.
    #[error("half-open probe timed out")]
    ProbeTimedOut,
    /// The upstream is not proven healthy and the calls in flight to find out did not
    /// finish within the probe timeout.
    #[error("upstream unproven; earlier calls still in flight")]
    Unproven,
}

impl Rejection {
    /// A stable snake_case name, e.g. for a metrics label.
    ///
    /// ```
    /// assert_eq!(tower_mcp_auth::breaker::Rejection::ProbeInFlight.label(), "probe_in_flight");
    /// ```
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Open => "open",
            Rejection::ProbeInFlight => "probe_in_flight",
            Rejection::Throttled => "throttled",
            Rejection::StormCooldown => "storm_cooldown",
            Rejection::ProbeTimedOut => "probe_timed_out",
            Rejection::Unproven => "unproven",
        }
    }
}

/// How a finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Counts as a success.
    Success,
    /// Counts as a failure.
    Failure,
    /// Not a failure, but the key waits this long (or the default) before the next call.
    Throttle(Option<Duration>),
    /// Counts for nothing (e.g. 401, 403, other 4xx), except that a half-open probe
    /// that got any answer shows the upstream is up.
    Neutral,
}

/// A state change of one key's circuit, as given to
/// [`CircuitBreakerLayer::on_transition`](crate::CircuitBreakerLayer::on_transition).
///
/// ```
/// use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, breaker::CircuitState};
///
/// let layer = CircuitBreakerLayer::new(BreakerConfig::default()).on_transition(|key, transition| {
///     if transition.to == CircuitState::Open {
///         eprintln!("{key} is down; next probe in {:?}", transition.open_for);
///     }
/// });
/// # drop(layer);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// For a transition to open: how long it stays open.
    pub open_for: Option<Duration>,
}

/// A point-in-time view of one key's circuit, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The key.
    pub key: String,
    /// The state (an open circuit whose period ended reads as half-open).
    pub state: CircuitState,
    /// Consecutive failures while closed.
    pub consecutive_failures: u32,
    /// Consecutive opens without a successful probe.
    pub opens: u32,
    /// How long until the circuit, throttle or cooldown admits calls again.
    pub retry_after: Option<Duration>,
}

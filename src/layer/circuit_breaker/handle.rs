//! Control and visibility of the circuits.

use std::fmt;
use std::sync::Arc;

use super::Shared;
use crate::breaker::BreakerSnapshot;

/// Control and visibility of a [`CircuitBreakerLayer`](super::CircuitBreakerLayer)'s circuits.
///
/// ```
/// use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, breaker::CircuitState};
///
/// let layer = CircuitBreakerLayer::new(BreakerConfig::default());
/// let handle = layer.handle();
/// // A status page:
/// for circuit in handle.snapshots() {
///     if circuit.state != CircuitState::Closed {
///         println!("{} is {:?}, retry in {:?}", circuit.key, circuit.state, circuit.retry_after);
///     }
/// }
/// assert!(handle.snapshot("https://mcp.example.com:443").is_none());
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("keys", &self.shared.breakers.entry_count())
            .finish()
    }
}

impl CircuitBreakerHandle {
    /// Forgets everything about `key`: closed, no throttle, no cooldown (e.g. after a
    /// user-forced reconnect).
    pub fn reset(&self, key: &str) {
        self.shared.breakers.invalidate(key);
    }

    /// The state of `key`'s circuit, if it has one.
    pub fn snapshot(&self, key: &str) -> Option<BreakerSnapshot> {
        self.shared.breakers.get(key).map(|b| b.snapshot(key))
    }

    /// The state of every known circuit.
    pub fn snapshots(&self) -> Vec<BreakerSnapshot> {
        self.shared
            .breakers
            .iter()
            .map(|(key, breaker)| breaker.snapshot(&key))
            .collect()
    }
}

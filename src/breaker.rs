//! The per-key circuit breaker state machine. Knows nothing of Tower.
//!
//! Closed: calls pass; consecutive failures or a failure rate over a sliding window trip
//! it. Open: calls fail fast until the open period (exponential backoff with jitter,
//! doubling per re-open) ends. Half-open: exactly one probe at a time; success closes and
//! resets, failure re-opens with the doubled period. Independently of the state, a 429
//! throttles the key until its `Retry-After`, and too many session starts in a window put
//! the key into a cooldown (the reconnect storm guard).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Thresholds and timings of a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_auth::BreakerConfig;
///
/// let config = BreakerConfig::default()
///     .with_consecutive_failures(3)
///     .with_open_backoff(Duration::from_millis(500), Duration::from_secs(60))
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
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct FailureRate {
    threshold: f64,
    window: Duration,
    minimum_calls: usize,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct StormGuard {
    max_starts: usize,
    window: Duration,
    cooldown: Duration,
}

impl Default for BreakerConfig {
    /// Trip after 5 consecutive failures or a 50% failure rate over 30 s (at least 20
    /// calls); open for 1 s doubling to 5 min, minus up to 10% jitter; probes time out
    /// after 10 s; more than 7 session starts in 45 s cool the key down for 15 s.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: Some(FailureRate {
                threshold: 0.5,
                window: Duration::from_secs(30),
                minimum_calls: 20,
            }),
            base_open: Duration::from_secs(1),
            max_open: Duration::from_secs(300),
            jitter: 0.1,
            probe_timeout: Duration::from_secs(10),
            storm: Some(StormGuard {
                max_starts: 7,
                window: Duration::from_secs(45),
                cooldown: Duration::from_secs(15),
            }),
            default_throttle: Duration::from_secs(1),
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

    /// The open period: `base`, doubling on every re-open, capped at `max`.
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

    /// How long a half-open probe may take before it counts as a failure.
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// More than `max_starts` session starts within `window` put the key into a
    /// `cooldown` during which every call fails fast.
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

    fn jittered(&self, period: Duration) -> Duration {
        if self.jitter == 0.0 {
            return period;
        }
        let cut: f64 = rand::random::<f64>() * self.jitter;
        period.mul_f64(1.0 - cut)
    }
}

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
/// use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, CircuitState};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive: u32,
    /// Admitted normal calls not finished yet.
    in_flight: u32,
    /// Whether a call has succeeded since the circuit last opened (or ever).
    proven: bool,
    window: VecDeque<(Instant, bool)>,
    opens: u32,
    throttled_until: Option<Instant>,
    starts: VecDeque<Instant>,
    cooldown_until: Option<Instant>,
}

/// One key's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    /// Bumped whenever a call finishes, so gated callers re-check.
    changes: watch::Sender<u64>,
}

/// What `admit` let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Normal,
    Probe,
}

/// What `admit` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Admit(Admission),
    Refuse(Rejection, Duration),
    /// Closed, but the upstream is not proven healthy and as many calls are in flight
    /// as failures it may still take before opening: wait for one to finish.
    Wait,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Self {
            changes: watch::channel(0).0,
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive: 0,
                in_flight: 0,
                proven: false,
                window: VecDeque::new(),
                opens: 0,
                throttled_until: None,
                starts: VecDeque::new(),
                cooldown_until: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver that sees every later change; take it before `admit` so a change
    /// between the decision and the wait is not missed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Admits a call or says why not and for how long. A session start counts toward
    /// the storm guard.
    pub(crate) fn admit(
        &self,
        config: &BreakerConfig,
        session_start: bool,
    ) -> (Decision, Option<Transition>) {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(until) = state.cooldown_until.filter(|until| now < *until) {
            return (
                Decision::Refuse(Rejection::StormCooldown, until - now),
                None,
            );
        }
        if let Some(until) = state.throttled_until.filter(|until| now < *until) {
            return (Decision::Refuse(Rejection::Throttled, until - now), None);
        }
        if let (true, Some(storm)) = (session_start, config.storm) {
            while state
                .starts
                .front()
                .is_some_and(|t| now.duration_since(*t) >= storm.window)
            {
                state.starts.pop_front();
            }
            state.starts.push_back(now);
            if state.starts.len() > storm.max_starts {
                state.starts.clear();
                state.cooldown_until = Some(crate::limits::instant_after(now, storm.cooldown));
                return (
                    Decision::Refuse(Rejection::StormCooldown, storm.cooldown),
                    None,
                );
            }
        }
        match state.phase {
            Phase::Closed => {
                // Until the upstream has answered, or once it has failed, never have more
                // calls in flight than failures it may take before opening: a dead
                // upstream sees `consecutive_failures` attempts, not a whole wave.
                let healthy = state.proven && state.consecutive == 0;
                if healthy || state.in_flight + state.consecutive < config.consecutive_failures {
                    state.in_flight += 1;
                    (Decision::Admit(Admission::Normal), None)
                } else {
                    (Decision::Wait, None)
                }
            }
            Phase::Open { until } if now < until => {
                (Decision::Refuse(Rejection::Open, until - now), None)
            }
            Phase::Open { .. } => {
                state.phase = Phase::HalfOpen { probing: true };
                let transition = Transition {
                    from: CircuitState::Open,
                    to: CircuitState::HalfOpen,
                    open_for: None,
                };
                (Decision::Admit(Admission::Probe), Some(transition))
            }
            Phase::HalfOpen { probing: true } => (
                Decision::Refuse(Rejection::ProbeInFlight, config.probe_timeout),
                None,
            ),
            Phase::HalfOpen { probing: false } => {
                state.phase = Phase::HalfOpen { probing: true };
                (Decision::Admit(Admission::Probe), None)
            }
        }
    }

    /// Records how an admitted call ended.
    pub(crate) fn record(
        &self,
        config: &BreakerConfig,
        admission: Admission,
        outcome: Outcome,
    ) -> Option<Transition> {
        let transition = self.record_locked(config, admission, outcome);
        self.changed();
        transition
    }

    fn record_locked(
        &self,
        config: &BreakerConfig,
        admission: Admission,
        outcome: Outcome,
    ) -> Option<Transition> {
        let now = Instant::now();
        let mut state = self.lock();
        if admission == Admission::Normal {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        if let Outcome::Throttle(retry_after) = outcome {
            let wait = retry_after
                .unwrap_or(config.default_throttle)
                .min(config.max_open);
            state.throttled_until = Some(crate::limits::instant_after(now, wait));
        }
        match admission {
            Admission::Probe => match outcome {
                Outcome::Failure => Some(open(&mut state, config, now, CircuitState::HalfOpen)),
                Outcome::Throttle(_) => {
                    state.phase = Phase::HalfOpen { probing: false };
                    None
                }
                Outcome::Success | Outcome::Neutral => {
                    state.phase = Phase::Closed;
                    state.consecutive = 0;
                    state.proven = true;
                    state.opens = 0;
                    state.window.clear();
                    Some(Transition {
                        from: CircuitState::HalfOpen,
                        to: CircuitState::Closed,
                        open_for: None,
                    })
                }
            },
            Admission::Normal => {
                // Any answer but a failure shows the upstream is up.
                let failed = match outcome {
                    Outcome::Failure => true,
                    Outcome::Throttle(_) => return None,
                    Outcome::Success | Outcome::Neutral => {
                        state.proven = true;
                        false
                    }
                };
                state.consecutive = if failed { state.consecutive + 1 } else { 0 };
                if let Some(rate) = config.failure_rate {
                    while state
                        .window
                        .front()
                        .is_some_and(|(t, _)| now.duration_since(*t) >= rate.window)
                    {
                        state.window.pop_front();
                    }
                    state.window.push_back((now, failed));
                }
                // Calls admitted before the circuit opened may finish after: they change
                // nothing but the counters.
                if !failed || state.phase != Phase::Closed {
                    return None;
                }
                let rate_tripped = config.failure_rate.is_some_and(|rate| {
                    let calls = state.window.len();
                    let failures = state.window.iter().filter(|(_, failed)| *failed).count();
                    calls >= rate.minimum_calls && failures as f64 >= rate.threshold * calls as f64
                });
                (state.consecutive >= config.consecutive_failures || rate_tripped)
                    .then(|| open(&mut state, config, now, CircuitState::Closed))
            }
        }
    }

    /// An admitted call ended without an outcome (its future was dropped): free its
    /// probe slot or in-flight count.
    pub(crate) fn release(&self, admission: Admission) {
        {
            let mut state = self.lock();
            match admission {
                Admission::Normal => state.in_flight = state.in_flight.saturating_sub(1),
                Admission::Probe if state.phase == (Phase::HalfOpen { probing: true }) => {
                    state.phase = Phase::HalfOpen { probing: false };
                }
                Admission::Probe => {}
            }
        }
        self.changed();
    }

    pub(crate) fn snapshot(&self, key: &str) -> BreakerSnapshot {
        let now = Instant::now();
        let state = self.lock();
        let (phase, phase_wait) = match state.phase {
            Phase::Closed => (CircuitState::Closed, None),
            Phase::Open { until } if now < until => (CircuitState::Open, Some(until - now)),
            Phase::Open { .. } | Phase::HalfOpen { .. } => (CircuitState::HalfOpen, None),
        };
        let waits = [
            phase_wait,
            state.throttled_until.filter(|t| now < *t).map(|t| t - now),
            state.cooldown_until.filter(|t| now < *t).map(|t| t - now),
        ];
        BreakerSnapshot {
            key: key.to_owned(),
            state: phase,
            consecutive_failures: state.consecutive,
            opens: state.opens,
            retry_after: waits.into_iter().flatten().max(),
        }
    }
}

fn open(state: &mut State, config: &BreakerConfig, now: Instant, from: CircuitState) -> Transition {
    state.opens += 1;
    let period = config.jittered(config.open_period(state.opens));
    state.phase = Phase::Open {
        until: crate::limits::instant_after(now, period),
    };
    state.consecutive = 0;
    state.proven = false;
    state.window.clear();
    Transition {
        from,
        to: CircuitState::Open,
        open_for: Some(period),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig::default()
            .with_consecutive_failures(3)
            .without_failure_rate()
            .with_jitter(0.0)
            .with_open_backoff(Duration::from_secs(1), Duration::from_secs(8))
    }

    fn admitted(decision: Decision) -> Admission {
        match decision {
            Decision::Admit(admission) => admission,
            other => panic!("not admitted: {other:?}"),
        }
    }

    fn fail(breaker: &Breaker, config: &BreakerConfig) -> Option<Transition> {
        let admission = admitted(breaker.admit(config, false).0);
        breaker.record(config, admission, Outcome::Failure)
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_per_reopen_and_resets_on_success() {
        let config = config();
        let breaker = Breaker::new();
        assert_eq!(fail(&breaker, &config), None);
        assert_eq!(fail(&breaker, &config), None);
        let opened = fail(&breaker, &config).expect("third failure opens");
        assert_eq!(opened.open_for, Some(Duration::from_secs(1)));

        let mut periods = vec![];
        for _ in 0..5 {
            let wait = match breaker.admit(&config, false).0 {
                Decision::Refuse(Rejection::Open, wait) => wait,
                other => panic!("{other:?}"),
            };
            tokio::time::advance(wait).await;
            let (probe, transition) = breaker.admit(&config, false);
            assert_eq!(probe, Decision::Admit(Admission::Probe));
            assert_eq!(transition.unwrap().to, CircuitState::HalfOpen);
            let reopened = breaker
                .record(&config, Admission::Probe, Outcome::Failure)
                .unwrap();
            periods.push(reopened.open_for.unwrap().as_secs());
        }
        assert_eq!(periods, [2, 4, 8, 8, 8]);

        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(
            breaker.admit(&config, false).0,
            Decision::Admit(Admission::Probe)
        );
        let closed = breaker
            .record(&config, Admission::Probe, Outcome::Neutral)
            .unwrap();
        assert_eq!(closed.to, CircuitState::Closed);
        assert_eq!(breaker.snapshot("k").opens, 0);
        fail(&breaker, &config);
        fail(&breaker, &config);
        assert_eq!(
            fail(&breaker, &config).unwrap().open_for,
            Some(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_one_probe_and_a_dropped_probe_frees_the_slot() {
        let config = config();
        let breaker = Breaker::new();
        (0..3).for_each(|_| {
            fail(&breaker, &config);
        });
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            breaker.admit(&config, false).0,
            Decision::Admit(Admission::Probe)
        );
        assert!(matches!(
            breaker.admit(&config, false).0,
            Decision::Refuse(Rejection::ProbeInFlight, _)
        ));
        breaker.release(Admission::Probe);
        assert_eq!(
            breaker.admit(&config, false).0,
            Decision::Admit(Admission::Probe)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unproven_or_failing_upstream_gets_at_most_n_calls_in_flight() {
        let config = config();
        let breaker = Breaker::new();
        let first: Vec<Admission> = (0..3)
            .map(|_| admitted(breaker.admit(&config, false).0))
            .collect();
        assert_eq!(
            breaker.admit(&config, false).0,
            Decision::Wait,
            "a new key: 3 in flight at most"
        );
        // One answer proves the upstream: everyone may go.
        breaker.record(&config, first[0], Outcome::Success);
        for _ in 0..100 {
            admitted(breaker.admit(&config, false).0);
        }
        // A failure makes it suspect again: in flight + failures stays under 3.
        let fresh = Breaker::new();
        let calls: Vec<Admission> = (0..3)
            .map(|_| admitted(fresh.admit(&config, false).0))
            .collect();
        fresh.record(&config, calls[0], Outcome::Failure);
        assert_eq!(fresh.admit(&config, false).0, Decision::Wait);
        fresh.release(calls[1]);
        admitted(fresh.admit(&config, false).0);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_trips_without_consecutive_failures() {
        let config = BreakerConfig::default()
            .with_consecutive_failures(100)
            .with_failure_rate(0.5, Duration::from_secs(10), 10)
            .with_jitter(0.0);
        let breaker = Breaker::new();
        let mut opened = None;
        for i in 0..10 {
            let outcome = if i % 2 == 1 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            let admission = admitted(breaker.admit(&config, false).0);
            opened = breaker.record(&config, admission, outcome).or(opened);
        }
        assert_eq!(opened.map(|t| t.to), Some(CircuitState::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn storm_guard_cools_down_after_too_many_session_starts() {
        let config = config().with_storm_guard(7, Duration::from_secs(45), Duration::from_secs(15));
        let breaker = Breaker::new();
        for _ in 0..7 {
            let admission = admitted(breaker.admit(&config, true).0);
            breaker.record(&config, admission, Outcome::Success);
        }
        assert_eq!(
            breaker.admit(&config, true).0,
            Decision::Refuse(Rejection::StormCooldown, Duration::from_secs(15))
        );
        assert!(matches!(
            breaker.admit(&config, false).0,
            Decision::Refuse(Rejection::StormCooldown, _)
        ));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(
            breaker.admit(&config, true).0,
            Decision::Admit(Admission::Normal)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_waits_for_retry_after_without_opening() {
        let config = config();
        let breaker = Breaker::new();
        for _ in 0..10 {
            if let Decision::Admit(admission) = breaker.admit(&config, false).0 {
                assert_eq!(
                    breaker.record(
                        &config,
                        admission,
                        Outcome::Throttle(Some(Duration::from_secs(2)))
                    ),
                    None
                );
            }
        }
        assert!(matches!(
            breaker.admit(&config, false).0,
            Decision::Refuse(Rejection::Throttled, _)
        ));
        assert_eq!(breaker.snapshot("k").state, CircuitState::Closed);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            breaker.admit(&config, false).0,
            Decision::Admit(Admission::Normal)
        );
    }
}

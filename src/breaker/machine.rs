//! One key's closed / open / half-open machine.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::storm::StormWindow;
use super::{BreakerConfig, BreakerSnapshot, CircuitState, Outcome, Rejection, Transition};

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
    storm: StormWindow,
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
                storm: StormWindow::default(),
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

    /// Admits a call or says why not and for how long. A session start (a JSON-RPC
    /// `initialize`) counts toward the storm guard and is refused during its cooldown;
    /// other calls never are.
    pub(crate) fn admit(
        &self,
        config: &BreakerConfig,
        session_start: bool,
    ) -> (Decision, Option<Transition>) {
        let now = Instant::now();
        let mut state = self.lock();
        if let (true, Some(storm)) = (session_start, config.storm) {
            if let Some(wait) = state.storm.cooling(now) {
                return (Decision::Refuse(Rejection::StormCooldown, wait), None);
            }
            if let Some(cooldown) = state.storm.start(&storm, now) {
                return (Decision::Refuse(Rejection::StormCooldown, cooldown), None);
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

    /// A response created a session although its request was not known to be an
    /// `initialize` (its body was not read): count the start now.
    pub(crate) fn session_created(&self, config: &BreakerConfig) {
        if let Some(storm) = config.storm {
            self.lock().storm.start(&storm, Instant::now());
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
        let waits = [phase_wait, state.storm.cooling(now)];
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
        // Calls that start no session are never refused by the storm guard.
        assert_eq!(
            breaker.admit(&config, false).0,
            Decision::Admit(Admission::Normal)
        );
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(
            breaker.admit(&config, true).0,
            Decision::Admit(Admission::Normal)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_never_open_the_circuit() {
        // 429 throttles are kept per principal by the layer; here they change nothing.
        let config = config();
        let breaker = Breaker::new();
        for _ in 0..10 {
            let admission = admitted(breaker.admit(&config, false).0);
            let throttled = Outcome::Throttle(Some(Duration::from_secs(2)));
            assert_eq!(breaker.record(&config, admission, throttled), None);
        }
        assert_eq!(
            breaker.admit(&config, false).0,
            Decision::Admit(Admission::Normal)
        );
    }
}

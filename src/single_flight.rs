//! Keyed single-flight: the first caller for a key leads, everyone else joins.
//!
//! The leader gets a [`Completer`] and hands it to whatever does the work (the refresh
//! coordinator moves it into a spawned task, so the work belongs to no caller). Every
//! caller, leader included, awaits a [`Waiter`]. Dropping a waiter abandons only that
//! wait. Dropping the completer without completing publishes "abandoned" (`None`), so
//! waiters never hang on work that died.
//!
//! This file has no tokio and no allocation-heavy machinery on purpose: it is compiled
//! both into the crate (std sync) and into `tests/loom_single_flight.rs` (loom sync),
//! where every interleaving of join, complete and drop is model-checked.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent state (every critical
    // section is a single map or vec operation), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// In-flight work, one per key at a time.
pub(crate) struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

struct Flight<V> {
    state: Mutex<FlightState<V>>,
}

struct FlightState<V> {
    /// `None` while running; `Some(None)` when abandoned.
    outcome: Option<Option<V>>,
    wakers: Vec<Waker>,
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// Joins the flight for `key`, starting one if there is none. Returns the wait and,
    /// for the caller that started the flight, the completer.
    pub(crate) fn join(this: &Arc<Self>, key: &K) -> (Waiter<V>, Option<Completer<K, V>>) {
        let mut flights = lock(&this.flights);
        if let Some(flight) = flights.get(key) {
            return (Waiter::new(flight.clone()), None);
        }
        let flight = Arc::new(Flight {
            state: Mutex::new(FlightState {
                outcome: None,
                wakers: Vec::new(),
            }),
        });
        flights.insert(key.clone(), flight.clone());
        drop(flights);
        let completer = Completer {
            owner: this.clone(),
            key: key.clone(),
            flight: flight.clone(),
            done: false,
        };
        (Waiter::new(flight), Some(completer))
    }

    /// Whether work for `key` is running.
    pub(crate) fn is_in_flight(&self, key: &K) -> bool {
        lock(&self.flights).contains_key(key)
    }
}

/// Publishes the outcome of a flight. Held by whoever runs the work.
pub(crate) struct Completer<K: Hash + Eq + Clone, V: Clone> {
    owner: Arc<SingleFlight<K, V>>,
    key: K,
    flight: Arc<Flight<V>>,
    done: bool,
}

impl<K: Hash + Eq + Clone, V: Clone> Completer<K, V> {
    /// Ends the flight with `value`: later callers start a new flight, current waiters
    /// get `Some(value)`.
    pub(crate) fn complete(mut self, value: V) {
        self.finish(Some(value));
    }

    fn finish(&mut self, outcome: Option<V>) {
        self.done = true;
        {
            let mut flights = lock(&self.owner.flights);
            if flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&self.key);
            }
        }
        let wakers = {
            let mut state = lock(&self.flight.state);
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Completer<K, V> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(None);
        }
    }
}

/// Waits for a flight's outcome: `Some(value)`, or `None` if it was abandoned.
pub(crate) struct Waiter<V> {
    flight: Arc<Flight<V>>,
    /// Index of this waiter's waker in the flight's list, once registered.
    slot: Option<usize>,
}

impl<V> Waiter<V> {
    fn new(flight: Arc<Flight<V>>) -> Self {
        Self { flight, slot: None }
    }
}

impl<V: Clone> Future for Waiter<V> {
    type Output = Option<V>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<V>> {
        let this = &mut *self;
        let mut state = lock(&this.flight.state);
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(outcome.clone());
        }
        match this.slot {
            Some(i) => {
                if !state.wakers[i].will_wake(cx.waker()) {
                    state.wakers[i] = cx.waker().clone();
                }
            }
            None => {
                this.slot = Some(state.wakers.len());
                state.wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

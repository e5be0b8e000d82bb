//! Model checking of the single-flight core (`src/single_flight.rs`) with loom: every
//! interleaving of join, complete, abandon and dropped waits is explored.
//!
//! The module is compiled here against loom's `Arc` and `Mutex` (the crate compiles it
//! against std's), so what is checked is the very code the coordinator runs.

mod sync {
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
}

#[allow(dead_code)]
#[path = "../src/single_flight.rs"]
mod single_flight;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use single_flight::SingleFlight;

/// Joins `key`; a leader "redeems" (checking that no other leader is active) and
/// completes with its ticket. Returns what the caller's wait resolved to.
fn caller(
    flights: &Arc<SingleFlight<u8, usize>>,
    active: &AtomicUsize,
    redemptions: &AtomicUsize,
) -> Option<usize> {
    let (waiter, completer) = SingleFlight::join(flights, &1);
    if let Some(completer) = completer {
        assert_eq!(
            active.fetch_add(1, Ordering::SeqCst),
            0,
            "two redemptions in flight at once"
        );
        let ticket = redemptions.fetch_add(1, Ordering::SeqCst) + 1;
        active.fetch_sub(1, Ordering::SeqCst);
        completer.complete(ticket);
    }
    loom::future::block_on(waiter)
}

/// `callers` threads (this one included) race for one key; every one must get the
/// result of a redemption that happened, and no slot may stay behind.
fn race(callers: usize) {
    let flights = Arc::new(SingleFlight::new());
    let active = Arc::new(AtomicUsize::new(0));
    let redemptions = Arc::new(AtomicUsize::new(0));
    let others: Vec<_> = (1..callers)
        .map(|_| {
            let (flights, active, redemptions) =
                (flights.clone(), active.clone(), redemptions.clone());
            loom::thread::spawn(move || caller(&flights, &active, &redemptions))
        })
        .collect();
    let mut outcomes = vec![caller(&flights, &active, &redemptions)];
    outcomes.extend(others.into_iter().map(|t| t.join().unwrap()));
    // A caller that joined a running flight shares its result instead of redeeming again.
    let total = redemptions.load(Ordering::SeqCst);
    assert!((1..=callers).contains(&total));
    for outcome in outcomes {
        let ticket = outcome.expect("no flight was abandoned");
        assert!(ticket >= 1 && ticket <= total);
    }
    assert!(
        !flights.is_in_flight(&1),
        "finished flights leave no slot behind"
    );
}

#[test]
fn one_flight_at_a_time_and_every_caller_gets_an_outcome() {
    loom::model(|| race(2));
}

#[test]
fn abandoned_flight_wakes_its_waiters_with_none_and_frees_the_key() {
    loom::model(|| {
        let flights = Arc::new(SingleFlight::<u8, usize>::new());
        let (leader_wait, completer) = SingleFlight::join(&flights, &1);
        let completer = completer.expect("first caller leads");
        let follower = {
            let flights = flights.clone();
            loom::thread::spawn(move || {
                let (waiter, completer) = SingleFlight::join(&flights, &1);
                match completer {
                    // Joined after the abandon: a fresh flight.
                    Some(completer) => {
                        completer.complete(9);
                        loom::future::block_on(waiter)
                    }
                    None => loom::future::block_on(waiter),
                }
            })
        };
        drop(completer);
        assert_eq!(loom::future::block_on(leader_wait), None);
        let followed = follower.join().unwrap();
        assert!(followed.is_none() || followed == Some(9));
        assert!(!flights.is_in_flight(&1));
    });
}

#[test]
fn a_dropped_wait_does_not_disturb_the_others() {
    loom::model(|| {
        let flights = Arc::new(SingleFlight::<u8, usize>::new());
        let (first, completer) = SingleFlight::join(&flights, &1);
        let completer = completer.unwrap();
        let (second, none) = SingleFlight::join(&flights, &1);
        assert!(none.is_none());
        let dropper = loom::thread::spawn(move || drop(first));
        let finisher = loom::thread::spawn(move || completer.complete(5));
        assert_eq!(loom::future::block_on(second), Some(5));
        dropper.join().unwrap();
        finisher.join().unwrap();
    });
}

#[test]
fn keys_are_independent() {
    loom::model(|| {
        let flights = Arc::new(SingleFlight::<u8, usize>::new());
        let (a_wait, a) = SingleFlight::join(&flights, &1);
        let (b_wait, b) = SingleFlight::join(&flights, &2);
        let (a, b) = (a.expect("key 1 leads"), b.expect("key 2 leads"));
        let t = loom::thread::spawn(move || b.complete(2));
        a.complete(1);
        assert_eq!(loom::future::block_on(a_wait), Some(1));
        assert_eq!(loom::future::block_on(b_wait), Some(2));
        t.join().unwrap();
    });
}

#[test]
fn three_callers_with_bounded_preemption() {
    // Three callers explode the full state space; a preemption bound of 2 still covers
    // every interleaving with up to two forced context switches, where races live.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| race(3));
}

//! Checked arithmetic and caps for numbers that come from the network or from
//! configuration, and a guard that turns a panicking task into a recorded failure.
//!
//! Every lifetime, `exp`, `Retry-After` and configured maximum passes through here
//! before it is added to a `SystemTime` or an `Instant` or handed to moka (which panics
//! on time-to-live values over 1000 years), so no value can panic the crate
//! (docs/architecture.md: bad input is an error).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The longest lifetime the crate believes of any token, flow, cooldown or cache entry:
/// one year. Longer values from servers (`expires_in`, `Retry-After`) and from
/// configuration are clamped to it.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The latest `exp` a JWT may claim and still be read as a time: the year 9999. An
/// `exp` beyond it is absurd and the token is treated as invalid.
pub(crate) const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

/// How far ahead of a deadline [`coarse_now`] may decide alone: nearer than this, the
/// precise clock decides. The coarse clock trails by about a timer tick (measured up
/// to 7 ms on a virtual machine whose tick is 4 ms), more only when the machine
/// stalls; a second covers that with room to spare.
pub(crate) const COARSE_GUARD: Duration = Duration::from_secs(1);

/// The wall-clock time as of the kernel's last timer tick: a few milliseconds behind
/// `SystemTime::now`, for the check every request makes (whether its token is still
/// before its refresh-ahead instant) while that instant is more than
/// [`COARSE_GUARD`] away. On Linux it reads `CLOCK_REALTIME_COARSE`, which costs a
/// few nanoseconds where a precise read costs 20 to 30; elsewhere it is
/// `SystemTime::now`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn coarse_now() -> SystemTime {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable `timespec` for the call's duration, and the
    // call writes nothing else. CLOCK_REALTIME_COARSE exists since Linux 2.6.32; a
    // failure is answered by the precise clock.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut time) } != 0;
    let (Ok(secs), Ok(nanos)) = (u64::try_from(time.tv_sec), u32::try_from(time.tv_nsec)) else {
        return SystemTime::now();
    };
    match UNIX_EPOCH.checked_add(Duration::new(secs, nanos)) {
        Some(time) if !failed => time,
        _ => SystemTime::now(),
    }
}

/// The wall-clock time, coarse where that is cheaper (see the Linux version).
#[cfg(not(target_os = "linux"))]
pub(crate) fn coarse_now() -> SystemTime {
    SystemTime::now()
}

/// `d` clamped to [`MAX_LIFETIME`].
pub(crate) fn clamp(d: Duration) -> Duration {
    d.min(MAX_LIFETIME)
}

/// `now + d`, with `d` clamped to [`MAX_LIFETIME`] first (then the addition cannot
/// overflow any real clock; should it, the far end of the clock is used).
pub(crate) fn system_after(now: SystemTime, d: Duration) -> SystemTime {
    let d = clamp(d);
    now.checked_add(d).unwrap_or(now)
}

/// `now + d` for monotonic instants, with `d` clamped to [`MAX_LIFETIME`].
pub(crate) fn instant_after(now: Instant, d: Duration) -> Instant {
    let d = clamp(d);
    now.checked_add(d).unwrap_or(now)
}

/// The instant `seconds` after the Unix epoch, or `None` when it is absurd (past the
/// year 9999) and must not be trusted.
pub(crate) fn unix_time(seconds: u64) -> Option<SystemTime> {
    if seconds > MAX_UNIX_SECONDS {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// How long from now until `at` (zero once passed), clamped for moka.
pub(crate) fn ttl_until(at: SystemTime) -> Duration {
    clamp(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A future that yields `Err(Panicked)` instead of unwinding when its body panics, so
/// a spawned redemption or exchange can record a failure (a cooldown, a failed flow)
/// whatever went wrong inside it.
pub(crate) struct CatchPanic<F> {
    inner: Pin<Box<F>>,
}

/// The body of a guarded task panicked.
#[derive(Debug)]
pub(crate) struct Panicked;

pub(crate) fn catch_panic<F: Future>(future: F) -> CatchPanic<F> {
    CatchPanic {
        inner: Box::pin(future),
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        // The future is never polled again after a panic (its outcome is final), so
        // state a panic left half-updated inside it cannot be observed.
        match catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_trails_the_precise_one_by_far_less_than_its_guard() {
        for _ in 0..1000 {
            let coarse = coarse_now();
            let after = SystemTime::now();
            let behind = after.duration_since(coarse).unwrap_or_default();
            assert!(behind < COARSE_GUARD / 10, "{behind:?}");
        }
    }

    #[test]
    fn huge_values_are_clamped_not_panicking() {
        let now = SystemTime::now();
        assert_eq!(system_after(now, Duration::MAX), now + MAX_LIFETIME);
        let instant = Instant::now();
        assert_eq!(
            instant_after(instant, Duration::MAX),
            instant + MAX_LIFETIME
        );
        assert_eq!(
            clamp(Duration::from_secs(u64::MAX)),
            MAX_LIFETIME,
            "expires_in = u64::MAX"
        );
    }

    #[test]
    fn absurd_unix_times_are_refused() {
        assert!(unix_time(u64::MAX).is_none());
        assert!(unix_time(1 << 63).is_none());
        assert!(unix_time(MAX_UNIX_SECONDS + 1).is_none());
        assert_eq!(
            unix_time(2_000_000_000),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
    }

    #[tokio::test]
    async fn a_panicking_body_becomes_an_error() {
        let outcome = catch_panic(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            1
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(catch_panic(async { 7 }).await.unwrap(), 7);
    }
}

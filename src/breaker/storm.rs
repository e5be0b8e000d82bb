//! The reconnect storm guard: a sliding window of session starts per key.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::config::StormGuard;

/// Session starts seen recently, and the cooldown they caused.
#[derive(Debug, Default)]
pub(crate) struct StormWindow {
    starts: VecDeque<Instant>,
    cooldown_until: Option<Instant>,
}

impl StormWindow {
    /// How long session starts stay refused, if they are.
    pub(crate) fn cooling(&self, now: Instant) -> Option<Duration> {
        self.cooldown_until
            .filter(|until| now < *until)
            .map(|until| until - now)
    }

    /// Counts a session start; returns the cooldown it started, if it was one too many.
    pub(crate) fn start(&mut self, guard: &StormGuard, now: Instant) -> Option<Duration> {
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= guard.window)
        {
            self.starts.pop_front();
        }
        self.starts.push_back(now);
        if self.starts.len() <= guard.max_starts {
            return None;
        }
        self.starts.clear();
        self.cooldown_until = Some(crate::limits::instant_after(now, guard.cooldown));
        Some(guard.cooldown)
    }
}

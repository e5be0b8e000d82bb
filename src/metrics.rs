//! Counters through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): install any recorder (Prometheus, StatsD, OpenTelemetry) and the layers
//! report to it. Without a recorder, or without the feature, they cost nothing.
//!
//! Names are stable; labels carry only a small fixed set of values (an outcome, a
//! state, a reason) and **never** a tenant, user, key or URL, so cardinality stays
//! bounded and no identity leaves the process through metrics. Tracing spans and
//! events are unchanged.
//!
//! | name | labels | counts |
//! |---|---|---|
//! | `mcp_auth_refresh_redemptions_total` | — | refresh-token redemptions sent to a token endpoint |
//! | `mcp_auth_refresh_outcomes_total` | `outcome`: `refreshed`, `invalid_grant`, `reauth_required`, `failed` | how redemptions ended |
//! | `mcp_auth_refresh_blocked_waits_total` | — | callers that waited for a refresh in flight |
//! | `mcp_auth_refresh_cooldowns_total` | — | cooldowns started after a failed redemption |
//! | `mcp_auth_refresh_cooldown_answers_total` | — | callers answered from a cooldown, no request sent |
//! | `mcp_auth_flows_started_total` | — | interactive authorization flows started (joins not counted) |
//! | `mcp_auth_flows_completed_total` | `outcome`: `completed`, `failed`, `client_rejected` | flows that ended through the callback |
//! | `mcp_auth_obo_exchanges_total` | — | token-exchange requests sent (each hop of a chain) |
//! | `mcp_auth_obo_cache_hits_total` | — | OBO tokens served from the cache |
//! | `mcp_auth_breaker_transitions_total` | `to`: `open`, `half_open`, `closed` | circuit state changes |
//! | `mcp_auth_breaker_refusals_total` | `reason`: `open`, `probe_in_flight`, `throttled`, `storm_cooldown`, `probe_timed_out`, `unproven` | calls refused without reaching the upstream |
//! | `mcp_auth_local_resource_errors_total` | — | calls that failed for lack of local resources (descriptors, buffers, memory), not counted against the upstream |
//!
//! ```
//! // At start-up, after installing a recorder: names, units and help texts.
//! tower_mcp_auth::metrics::describe();
//! assert_eq!(tower_mcp_auth::metrics::REFRESH_REDEMPTIONS, "mcp_auth_refresh_redemptions_total");
//! ```
//!
//! `cargo run --example metrics` exports them for Prometheus.

/// Refresh-token redemptions sent to a token endpoint.
pub const REFRESH_REDEMPTIONS: &str = "mcp_auth_refresh_redemptions_total";
/// How redemptions ended (label `outcome`).
pub const REFRESH_OUTCOMES: &str = "mcp_auth_refresh_outcomes_total";
/// Callers that waited for a refresh already in flight.
pub const REFRESH_BLOCKED_WAITS: &str = "mcp_auth_refresh_blocked_waits_total";
/// Cooldowns started after a failed redemption.
pub const REFRESH_COOLDOWNS: &str = "mcp_auth_refresh_cooldowns_total";
/// Callers answered from a cooldown without a request.
pub const REFRESH_COOLDOWN_ANSWERS: &str = "mcp_auth_refresh_cooldown_answers_total";
/// Interactive authorization flows started.
pub const FLOWS_STARTED: &str = "mcp_auth_flows_started_total";
/// Flows ended through the callback (label `outcome`).
pub const FLOWS_COMPLETED: &str = "mcp_auth_flows_completed_total";
/// Token-exchange requests sent.
pub const OBO_EXCHANGES: &str = "mcp_auth_obo_exchanges_total";
/// OBO tokens served from the cache.
pub const OBO_CACHE_HITS: &str = "mcp_auth_obo_cache_hits_total";
/// Circuit state changes (label `to`).
pub const BREAKER_TRANSITIONS: &str = "mcp_auth_breaker_transitions_total";
/// Calls refused by a breaker (label `reason`).
pub const BREAKER_REFUSALS: &str = "mcp_auth_breaker_refusals_total";
/// Calls that failed for lack of local resources (not the upstream's failures).
pub const LOCAL_RESOURCE_ERRORS: &str = "mcp_auth_local_resource_errors_total";

/// Registers every metric's description with the installed recorder.
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use ::metrics::describe_counter;
        describe_counter!(
            REFRESH_REDEMPTIONS,
            "Refresh-token redemptions sent to a token endpoint"
        );
        describe_counter!(REFRESH_OUTCOMES, "How refresh-token redemptions ended");
        describe_counter!(
            REFRESH_BLOCKED_WAITS,
            "Callers that waited for a refresh in flight"
        );
        describe_counter!(
            REFRESH_COOLDOWNS,
            "Cooldowns started after a failed redemption"
        );
        describe_counter!(
            REFRESH_COOLDOWN_ANSWERS,
            "Callers answered from a cooldown without a request"
        );
        describe_counter!(FLOWS_STARTED, "Interactive authorization flows started");
        describe_counter!(
            FLOWS_COMPLETED,
            "Authorization flows ended through the callback"
        );
        describe_counter!(OBO_EXCHANGES, "Token-exchange requests sent");
        describe_counter!(OBO_CACHE_HITS, "OBO tokens served from the cache");
        describe_counter!(BREAKER_TRANSITIONS, "Circuit breaker state changes");
        describe_counter!(BREAKER_REFUSALS, "Calls refused by a circuit breaker");
    }
}

/// Adds one to `name`.
#[inline]
pub(crate) fn count(name: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(name).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

/// Adds one to `name` with the label `key` = `value` (a fixed, identity-free value).
#[inline]
pub(crate) fn count_with(name: &'static str, key: &'static str, value: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(name, key => value).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, key, value);
}

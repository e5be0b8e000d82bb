//! A minimal Prometheus text exposition: a `metrics` recorder that keeps counters,
//! gauges and histograms (fixed buckets) and renders them. Written here instead of
//! pulling in an exporter whose dependencies (rand 0.9, hashbrown) would be a second
//! copy of crates already in the tree.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// The upper bounds of every histogram's buckets, in seconds: request latencies from
/// 1 ms to 30 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// An `f64` in an atomic, for gauges and sums.
#[derive(Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn update(&self, f: impl Fn(f64) -> f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(f(f64::from_bits(bits)).to_bits())
            });
    }
}

impl GaugeFn for AtomicF64 {
    fn increment(&self, value: f64) {
        self.update(|now| now + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|now| now - value);
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Buckets {
    /// Observations at or below each bound of [`BUCKETS`] (not cumulative).
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicF64,
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        if let Some(i) = BUCKETS.iter().position(|bound| value <= *bound) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.update(|sum| sum + value);
    }
}

#[derive(Default)]
struct Registry {
    // `Key` orders by name first, so one name's series render together; a lookup by
    // `Key` allocates nothing.
    counters: RwLock<BTreeMap<Key, Arc<AtomicU64>>>,
    gauges: RwLock<BTreeMap<Key, Arc<AtomicF64>>>,
    histograms: RwLock<BTreeMap<Key, Arc<Buckets>>>,
    help: RwLock<HashMap<String, String>>,
}

/// Renders what a [`MetricsRecorder`] recorded. Cheap to clone.
#[derive(Clone, Default)]
pub struct MetricsExposition {
    registry: Arc<Registry>,
}

/// A `metrics` recorder for counters, gauges and histograms, rendered by its
/// [`MetricsExposition`] in the Prometheus text format.
///
/// ```
/// use mcp_auth_proxy::MetricsRecorder;
///
/// let recorder = MetricsRecorder::new();
/// let handle = recorder.handle();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("mcp_auth_obo_exchanges_total").increment(2);
///     metrics::gauge!("mcp_auth_proxy_open_streams").increment(1.0);
///     metrics::histogram!("mcp_auth_proxy_request_duration_seconds").record(0.003);
/// });
/// let text = handle.render();
/// assert!(text.contains("mcp_auth_obo_exchanges_total 2"));
/// assert!(text.contains("mcp_auth_proxy_open_streams 1"));
/// assert!(text.contains("mcp_auth_proxy_request_duration_seconds_bucket{le=\"0.005\"} 1"));
/// ```
#[derive(Default)]
pub struct MetricsRecorder {
    handle: MetricsExposition,
}

impl MetricsRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle that renders what this recorder records.
    pub fn handle(&self) -> MetricsExposition {
        self.handle.clone()
    }

    /// Installs this recorder for the process; its handle, or `None` if another
    /// recorder is installed already.
    pub fn install(self) -> Option<MetricsExposition> {
        let handle = self.handle();
        metrics::set_global_recorder(self).ok().map(|()| handle)
    }

    fn describe(&self, key: KeyName, description: SharedString) {
        let mut help = self
            .handle
            .registry
            .help
            .write()
            .unwrap_or_else(|p| p.into_inner());
        help.insert(key.as_str().to_owned(), description.into_owned());
    }
}

/// The series of `key`, created on first use in `map`.
fn series<T: Default>(map: &RwLock<BTreeMap<Key, Arc<T>>>, key: &Key) -> Arc<T> {
    if let Some(value) = map.read().unwrap_or_else(|p| p.into_inner()).get(key) {
        return value.clone();
    }
    let mut map = map.write().unwrap_or_else(|p| p.into_inner());
    map.entry(key.clone()).or_default().clone()
}

impl Recorder for MetricsRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(series(&self.handle.registry.counters, key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(series(&self.handle.registry.gauges, key))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(series(&self.handle.registry.histograms, key))
    }
}

/// `{a="x",b="y"}` (empty for no labels), values escaped; `extra` appended last.
fn labels(out: &mut String, key: &Key, extra: Option<(&str, &str)>) {
    let all: Vec<(&str, &str)> = key
        .labels()
        .map(|l| (l.key(), l.value()))
        .chain(extra)
        .collect();
    if all.is_empty() {
        return;
    }
    out.push('{');
    for (i, (key, value)) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{key}=\"{escaped}\"");
    }
    out.push('}');
}

impl MetricsExposition {
    /// Everything recorded, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let registry = &self.registry;
        let help = registry.help.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let header = |out: &mut String, last: &mut Option<String>, name: &str, kind| {
            if last.as_deref() != Some(name) {
                if let Some(text) = help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {}", text.replace('\n', " "));
                }
                let _ = writeln!(out, "# TYPE {name} {kind}");
                *last = Some(name.to_owned());
            }
        };
        let mut last = None;
        let counters = registry.counters.read().unwrap_or_else(|p| p.into_inner());
        for (key, value) in counters.iter() {
            let name = key.name();
            header(&mut out, &mut last, name, "counter");
            out.push_str(name);
            labels(&mut out, key, None);
            let _ = writeln!(out, " {}", value.load(Ordering::Relaxed));
        }
        let gauges = registry.gauges.read().unwrap_or_else(|p| p.into_inner());
        for (key, value) in gauges.iter() {
            let name = key.name();
            header(&mut out, &mut last, name, "gauge");
            out.push_str(name);
            labels(&mut out, key, None);
            let _ = writeln!(out, " {}", value.load());
        }
        let histograms = registry
            .histograms
            .read()
            .unwrap_or_else(|p| p.into_inner());
        for (key, buckets) in histograms.iter() {
            let name = key.name();
            header(&mut out, &mut last, name, "histogram");
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(&buckets.counts) {
                cumulative += count.load(Ordering::Relaxed);
                let _ = write!(out, "{name}_bucket");
                labels(&mut out, key, Some(("le", &bound.to_string())));
                let _ = writeln!(out, " {cumulative}");
            }
            let count = buckets.count.load(Ordering::Relaxed);
            let _ = write!(out, "{name}_bucket");
            labels(&mut out, key, Some(("le", "+Inf")));
            let _ = writeln!(out, " {count}");
            let _ = write!(out, "{name}_sum");
            labels(&mut out, key, None);
            let _ = writeln!(out, " {}", buckets.sum.load());
            let _ = write!(out, "{name}_count");
            labels(&mut out, key, None);
            let _ = writeln!(out, " {count}");
        }
        out
    }
}

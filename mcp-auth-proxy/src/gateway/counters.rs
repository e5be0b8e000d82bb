//! A minimal Prometheus text exposition of the crate's counters: a `metrics` recorder
//! that keeps counters (all the crate emits) and renders them. Written here instead of
//! pulling in an exporter whose dependencies (rand 0.9, hashbrown) would be a second
//! copy of crates already in the tree.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

type Series = (String, Vec<(String, String)>);

#[derive(Default)]
struct Registry {
    counters: RwLock<BTreeMap<Series, Arc<AtomicU64>>>,
    help: RwLock<HashMap<String, String>>,
}

/// Renders the counters recorded by [`CounterRecorder`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct CounterExposition {
    registry: Arc<Registry>,
}

/// A `metrics` recorder for counters (gauges and histograms are ignored: the crate
/// emits none).
///
/// ```
/// use mcp_auth_proxy::CounterRecorder;
///
/// let recorder = CounterRecorder::new();
/// let handle = recorder.handle();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("mcp_auth_obo_exchanges_total").increment(2);
/// });
/// assert!(handle.render().contains("mcp_auth_obo_exchanges_total 2"));
/// ```
#[derive(Default)]
pub struct CounterRecorder {
    handle: CounterExposition,
}

impl CounterRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle that renders what this recorder records.
    pub fn handle(&self) -> CounterExposition {
        self.handle.clone()
    }

    /// Installs this recorder for the process; its handle, or `None` if another
    /// recorder is installed already.
    pub fn install(self) -> Option<CounterExposition> {
        let handle = self.handle();
        metrics::set_global_recorder(self).ok().map(|()| handle)
    }
}

impl Recorder for CounterRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        let mut help = self
            .handle
            .registry
            .help
            .write()
            .unwrap_or_else(|p| p.into_inner());
        help.insert(key.as_str().to_owned(), description.into_owned());
    }

    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let series: Series = (
            key.name().to_owned(),
            key.labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect(),
        );
        let registry = &self.handle.registry;
        if let Some(value) = registry
            .counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&series)
        {
            return Counter::from_arc(value.clone());
        }
        let mut counters = registry.counters.write().unwrap_or_else(|p| p.into_inner());
        Counter::from_arc(counters.entry(series).or_default().clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl CounterExposition {
    /// The counters in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let counters = self
            .registry
            .counters
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let help = self.registry.help.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let mut last = None;
        for ((name, labels), value) in counters.iter() {
            if last != Some(name) {
                if let Some(text) = help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {}", text.replace('\n', " "));
                }
                let _ = writeln!(out, "# TYPE {name} counter");
                last = Some(name);
            }
            out.push_str(name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in labels.iter().enumerate() {
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
            let _ = writeln!(out, " {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

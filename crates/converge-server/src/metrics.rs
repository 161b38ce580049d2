//! Prometheus metrics: requests by route and status, request latency, drives in progress,
//! decisions by outcome and runs by status. Labels are route patterns and fixed words only:
//! never a run id, tenant or token.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The server's metrics and their registry.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    driving: Gauge,
    drives: Counter,
    decisions: Family<OutcomeLabels, Counter>,
    runs: Family<StatusLabels, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("converge");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_25, 2.0, 16))) as fn() -> Histogram,
        );
        let driving = Gauge::default();
        let drives = Counter::default();
        let decisions = Family::<OutcomeLabels, Counter>::default();
        let runs = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the first byte of a stream), by route",
            latency.clone(),
        );
        registry.register(
            "runs_driving",
            "Runs this server is driving now",
            driving.clone(),
        );
        registry.register(
            "drives",
            "Drives started (submissions, resumes, decisions, cancellations)",
            drives.clone(),
        );
        registry.register(
            "decisions",
            "Decision attempts, by outcome (accepted or refused)",
            decisions.clone(),
        );
        registry.register(
            "runs",
            "Runs in the journal, by status (at the last scrape)",
            runs.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            driving,
            drives,
            decisions,
            runs,
        }
    }

    pub(crate) fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    pub(crate) fn drives_started(&self) {
        self.drives.inc();
        self.driving.inc();
    }

    pub(crate) fn drives_ended(&self) {
        self.driving.dec();
    }

    pub(crate) fn decision(&self, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "refused" };
        self.decisions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition, with the run counts given (by status name).
    pub(crate) fn encode(&self, runs: &[(&'static str, i64)]) -> Result<String, std::fmt::Error> {
        for (status, count) in runs {
            self.runs
                .get_or_create(&StatusLabels {
                    status: (*status).to_owned(),
                })
                .set(*count);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

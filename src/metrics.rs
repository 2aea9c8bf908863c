//! Every Prometheus metric keymeter exports, in one place.
//!
//! Naming follows Prometheus conventions: `keymeter_` prefix, `_total` for
//! counters, base units (`_seconds`, `_bytes`) last, labels with small,
//! bounded value sets (reason codes, route templates, projection names).
//! The README's metric table mirrors this list.

use std::path::Path;
use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub mod process;
mod storage;

pub use storage::StorageGauges;

pub struct Metrics {
    pub registry: Registry,
    pub events_accepted_total: IntCounter,
    pub events_rejected_total: IntCounterVec,
    pub events_duplicate_total: IntCounter,
    pub billing_statements_total: IntCounterVec,
    pub billing_late_events_total: IntCounterVec,
    pub billing_reconcile_failures_total: IntCounter,
    pub billing_closed_before_seconds: IntGauge,
    pub meter_events_skipped_total: IntCounterVec,
    pub log_batches_total: IntCounter,
    pub log_records_total: IntCounter,
    pub log_bytes_total: IntCounter,
    pub log_fsync_seconds: Histogram,
    pub log_batch_records: Histogram,
    pub log_head_seq: IntGauge,
    pub log_append_errors_total: IntCounter,
    pub ready: IntGauge,
    pub projection_applied_seq: IntGaugeVec,
    pub projection_lag_records: IntGaugeVec,
    pub writer_queue_depth: IntGauge,
    pub dedup_keys: IntGauge,
    pub dedup_keys_limit: IntGauge,
    pub dedup_tenant_keys_held_max: IntGauge,
    pub dedup_tenant_keys_limit: IntGauge,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub tls_handshake_failures_total: IntCounter,
    pub kafka_messages_total: IntCounterVec,
    pub kafka_batches_total: IntCounterVec,
    pub kafka_dead_letters_total: IntCounterVec,
    pub kafka_lag_records: IntGaugeVec,
    pub kafka_connected: IntGauge,
    pub kafka_assigned_partitions: IntGauge,
    pub kafka_errors_total: IntCounter,
    pub kafka_backpressure_waits_total: IntCounter,
    pub license_validations_total: IntCounterVec,
    pub signature_refusals_total: IntCounterVec,
    pub cross_product_refusals_total: IntCounterVec,
    pub signed_requests_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub seat_operations_total: IntCounterVec,
    pub seats_in_use: IntGauge,
    pub license_admin_total: IntCounterVec,
    pub audit_checkpoints_total: IntCounter,
    pub audit_anchor_errors_total: IntCounter,
    pub build_info: IntGaugeVec,
    pub process_start_time_seconds: Gauge,
    /// Log size, segments and free space, measured on scrape.
    pub storage: StorageGauges,
}

/// What describes the process rather than its work: build, start time and
/// the data directory's disk. Set once here, or measured on scrape.
fn process_metrics(registry: &Registry) -> (IntGaugeVec, Gauge, StorageGauges) {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "keymeter_build_info",
            "Always 1; the labels name the version and git commit of the running binary.",
        ),
        &["version", "commit"],
    )
    .expect("valid metric");
    build_info
        .with_label_values(&[process::VERSION, process::GIT_COMMIT])
        .set(1);
    let start = Gauge::new(
        "keymeter_process_start_time_seconds",
        "When the process started, in seconds since the Unix epoch.",
    )
    .expect("valid metric");
    start.set(process::start_time_seconds());
    let storage = StorageGauges::default();
    for c in [
        Box::new(build_info.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(start.clone()),
        Box::new(storage.clone()),
    ] {
        registry.register(c).expect("unique metric");
    }
    (build_info, start, storage)
}

fn exp_buckets(start: f64, factor: f64, n: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, n).expect("valid buckets")
}

impl Metrics {
    // One declaration per metric, in one list: long by design, splitting it
    // would only scatter the catalogue.
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "keymeter_http_request_duration_seconds",
                "HTTP request latency by route template, method and status.",
            )
            .buckets(exp_buckets(0.000_05, 2.0, 18)),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_request_duration_seconds.clone()))
            .expect("unique metric");
        let (build_info, process_start_time_seconds, storage) = process_metrics(&registry);
        Metrics {
            events_accepted_total: counter(
                "keymeter_events_accepted_total",
                "Usage events written to the log (duplicates excluded).",
            ),
            events_rejected_total: counter_vec(
                "keymeter_events_rejected_total",
                "Input refused, by reason code.",
                &["reason"],
            ),
            events_duplicate_total: counter(
                "keymeter_events_duplicate_total",
                "Events dropped as duplicates of an already-recorded source+id.",
            ),
            meter_events_skipped_total: counter_vec(
                "keymeter_meter_events_skipped_total",
                "Logged events a meter skipped because it could not read them (missing or non-numeric value), by meter and reason; the counts are stored with the counters, so a restart or replay gives the same.",
                &["meter", "reason"],
            ),
            billing_statements_total: counter_vec(
                "keymeter_billing_statements_total",
                "Billing statement versions issued, by kind (initial, restatement).",
                &["kind"],
            ),
            billing_late_events_total: counter_vec(
                "keymeter_billing_late_events_total",
                "Events dated in a closed billing period, by outcome (restated, refused).",
                &["outcome"],
            ),
            billing_reconcile_failures_total: counter(
                "keymeter_billing_reconcile_failures_total",
                "Billing statements not issued because their totals did not reconcile.",
            ),
            billing_closed_before_seconds: gauge(
                "keymeter_billing_closed_before_seconds",
                "Every billing period ending at or before this time (Unix seconds) is closed.",
            ),
            log_batches_total: counter(
                "keymeter_log_batches_total",
                "Batches appended to the log (one fdatasync each).",
            ),
            log_records_total: counter("keymeter_log_records_total", "Records appended to the log."),
            log_bytes_total: counter(
                "keymeter_log_bytes_total",
                "Record payload bytes appended to the log.",
            ),
            log_fsync_seconds: histogram(
                "keymeter_log_fsync_seconds",
                "Time to write and fdatasync one log batch.",
                exp_buckets(0.000_05, 2.0, 18),
            ),
            log_batch_records: histogram(
                "keymeter_log_batch_records",
                "Records per appended log batch.",
                exp_buckets(1.0, 4.0, 10),
            ),
            log_head_seq: gauge("keymeter_log_head_seq", "Sequence number of the last logged record."),
            log_append_errors_total: counter(
                "keymeter_log_append_errors_total",
                "Log writes or fdatasyncs that failed (the engine stops: the log refuses further appends).",
            ),
            ready: gauge(
                "keymeter_ready",
                "1 while the engine runs and /readyz answers ready; 0 once a stage has failed.",
            ),
            projection_applied_seq: gauge_vec(
                "keymeter_projection_applied_seq",
                "Last log sequence number applied, by projection.",
                &["projection"],
            ),
            projection_lag_records: gauge_vec(
                "keymeter_projection_lag_records",
                "Log head minus applied sequence number, by projection.",
                &["projection"],
            ),
            writer_queue_depth: gauge(
                "keymeter_writer_queue_depth",
                "Requests waiting for the single writer.",
            ),
            dedup_keys: gauge(
                "keymeter_dedup_keys",
                "Event identities held by the dedup index.",
            ),
            dedup_keys_limit: gauge(
                "keymeter_dedup_keys_limit",
                "The most identities the dedup index holds (dedup_keys_max).",
            ),
            dedup_tenant_keys_held_max: gauge(
                "keymeter_dedup_tenant_keys_held_max",
                "Identities held by the product (or unbound API key) that holds the most.",
            ),
            dedup_tenant_keys_limit: gauge(
                "keymeter_dedup_tenant_keys_limit",
                "The most identities one product (or unbound API key) may hold.",
            ),
            http_requests_total: counter_vec(
                "keymeter_http_requests_total",
                "HTTP requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_request_duration_seconds,
            tls_handshake_failures_total: counter(
                "keymeter_tls_handshake_failures_total",
                "TLS handshakes on the API listener that failed or timed out (plain HTTP, unknown client CA, no common version).",
            ),
            kafka_messages_total: counter_vec(
                "keymeter_kafka_messages_total",
                "Kafka messages written to the log, by result (accepted, duplicate, rejected).",
                &["result"],
            ),
            kafka_batches_total: counter_vec(
                "keymeter_kafka_batches_total",
                "Partition batches handed to the engine, by result (written, conflict, refused).",
                &["result"],
            ),
            kafka_dead_letters_total: counter_vec(
                "keymeter_kafka_dead_letters_total",
                "Dead-letter produces, by result (delivered, retried, late).",
                &["result"],
            ),
            kafka_lag_records: gauge_vec(
                "keymeter_kafka_lag_records",
                "High watermark minus the position stored in the log, by topic and partition.",
                &["topic", "partition"],
            ),
            kafka_connected: gauge(
                "keymeter_kafka_connected",
                "1 while the Kafka consumer reaches its brokers, 0 otherwise.",
            ),
            kafka_assigned_partitions: gauge(
                "keymeter_kafka_assigned_partitions",
                "Kafka partitions assigned to this instance.",
            ),
            kafka_errors_total: counter(
                "keymeter_kafka_errors_total",
                "Errors reported by the Kafka client (broker down, transport, fetch).",
            ),
            kafka_backpressure_waits_total: counter(
                "keymeter_kafka_backpressure_waits_total",
                "Times the consumer stopped polling because a partition's buffer hit its bound while the engine was behind.",
            ),
            signature_refusals_total: counter_vec(
                "keymeter_signature_refusals_total",
                "Calls refused for their request signature, by product (\"none\" for keys without one) and reason (missing, malformed, unknown_key, expired, invalid, replayed, nonce_capacity, nonce_journal).",
                &["product", "reason"],
            ),
            cross_product_refusals_total: counter_vec(
                "keymeter_cross_product_refusals_total",
                "Calls by a product-bound API key that named another product's license, by the key's product and call (seat, validate, license_file, usage; usage counts events).",
                &["product", "call"],
            ),
            signed_requests_total: counter_vec(
                "keymeter_signed_requests_total",
                "Calls with a valid request signature, by product.",
                &["product"],
            ),
            rate_limited_total: counter_vec(
                "keymeter_rate_limited_total",
                "Calls refused with 429, by call (validate, checkout) and limit (api_key, license).",
                &["call", "limit"],
            ),
            license_validations_total: counter_vec(
                "keymeter_license_validations_total",
                "License validations answered, by verdict code.",
                &["code"],
            ),
            seat_operations_total: counter_vec(
                "keymeter_seat_operations_total",
                "Seat checkouts, heartbeats, releases and reclaimed leases, by result (ok or refusal code).",
                &["operation", "result"],
            ),
            seats_in_use: gauge(
                "keymeter_seats_in_use",
                "Live seats over all licenses, as of the last lease sweep (every 5 s).",
            ),
            license_admin_total: counter_vec(
                "keymeter_license_admin_total",
                "License admin operations (create, update, suspend, …), by result (ok or refusal code).",
                &["operation", "result"],
            ),
            audit_checkpoints_total: counter(
                "keymeter_audit_checkpoints_total",
                "Signed checkpoints appended to the log.",
            ),
            audit_anchor_errors_total: counter(
                "keymeter_audit_anchor_errors_total",
                "Checkpoints that could not be written to the audit anchor file (they are in the log).",
            ),
            build_info,
            process_start_time_seconds,
            storage,
            registry,
        }
    }

    /// Measures the disk of `data_dir` (and the log in `log_dir`) on every
    /// scrape from now on.
    pub fn watch_data_dir(&self, data_dir: &Path, log_dir: &Path) {
        self.storage.watch(data_dir, log_dir);
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub fn metrics() -> &'static Metrics {
    &METRICS
}

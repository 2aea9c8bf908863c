//! The deploy artifacts name what keymeter really has: every metric the
//! Grafana dashboard, the alerting rules (and their unit tests) and the
//! Kubernetes PrometheusRule use is exported by a running server, and the
//! keymeter.toml files of the compose stack and the Kubernetes ConfigMap
//! are configurations keymeter accepts. A renamed metric or setting fails
//! here, not on a dashboard or at a rollout.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const TOPIC: &str = "usage-events";
const DLQ: &str = "usage-events-dlq";

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `keymeter_…` identifier in `text`.
fn metric_names_in(text: &str, out: &mut BTreeSet<String>) {
    let ident = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut rest = text;
    while let Some(at) = rest.find("keymeter_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..len].trim_end_matches('_').to_owned());
        }
        rest = &tail[len..];
    }
}

/// The PromQL expressions of a Grafana dashboard.
fn dashboard_exprs(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(e)) = map.get("expr") {
                out.push(e.clone());
            }
            map.values().for_each(|v| dashboard_exprs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Metric names used by the dashboard, the rules, their tests and the
/// Kubernetes PrometheusRule.
fn referenced_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/keymeter.json")).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "the dashboard's queries were not found");
    exprs.iter().for_each(|e| metric_names_in(e, &mut names));
    for file in [
        "deploy/prometheus/rules.yml",
        "deploy/prometheus/rules.test.yml",
        "deploy/k8s/prometheusrule.yaml",
    ] {
        metric_names_in(&repo_file(file), &mut names);
    }
    names
}

/// `(family name, type)` of every `# TYPE` line of a scrape.
fn families(scrape: &str) -> BTreeSet<(String, String)> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// The referenced names the scrape does not export; a histogram's
/// `_bucket`, `_sum` and `_count` series belong to its family.
fn missing(referenced: &BTreeSet<String>, scrape: &str) -> Vec<String> {
    let families = families(scrape);
    let has = |name: &str, kind: Option<&str>| {
        families
            .iter()
            .any(|(n, k)| n == name && kind.is_none_or(|kind| k == kind))
    };
    referenced
        .iter()
        .filter(|name| {
            !has(name, None)
                && !["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|base| has(base, Some("histogram")))
                })
        })
        .cloned()
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Kafka source on `bootstrap` with a dead-letter topic, validation rate
/// limits a test reaches in two calls, and the metrics listener.
fn config_file(dir: &Path, bootstrap: &str, metrics_addr: &str) -> std::path::PathBuf {
    let file = dir.join("keymeter.toml");
    std::fs::write(
        &file,
        format!(
            "metrics_listen = \"{metrics_addr}\"\n\
             [rate_limits]\n\
             validate_per_license = {{ per_second = 1, burst = 1 }}\n\
             [kafka]\nbrokers = \"{bootstrap}\"\ntopics = [\"{TOPIC}\"]\n\
             group = \"deploy-test\"\ndead_letter_topic = \"{DLQ}\"\n"
        ),
    )
    .unwrap();
    file
}

/// One valid event and one that is not JSON (quarantined, dead-lettered).
fn produce(bootstrap: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let valid = json!({"specversion": "1.0", "id": "k-1", "source": "deploy-test",
        "type": "api_call", "subject": "c1", "data": {}})
    .to_string();
    for value in [valid.as_bytes(), b"not json".as_slice()] {
        producer
            .send(BaseRecord::to(TOPIC).key("c1").payload(value))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Ingest (accepted and refused), licensing (validation, a rate-limited
/// validation, a seat, a call naming another product's license) and a
/// signed-call refusal: each labelled family gets a series.
async fn traffic(server: &Server) {
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let time = time_from_now(0);
    let ok = event("h-1", "api_call", "c1", &time, json!({}));
    assert_eq!(server.ingest(ADMIN_KEY, &[ok]).await.status(), 204);
    let bad = server
        .post_events(ADMIN_KEY, "application/cloudevents+json", "{")
        .await;
    assert_eq!(bad.status(), 400);
    server
        .create_product(json!({"id": "acme", "requireSignatures": true}))
        .await;
    let seat_policy = json!({"type": "seat", "seats": {"max": 2, "mode": "floating"}});
    let lic = server
        .create_license(json!({"product": "globex", "customer": "c1", "policy": seat_policy}))
        .await;
    let (id, key) = (lic["id"].as_str().unwrap(), lic["key"].as_str().unwrap());
    let body = json!({"key": key});
    let validate = |k: String| {
        let body = body.clone();
        async move {
            server
                .post_json(&k, "/api/v1/licenses/validate", &body)
                .await
        }
    };
    assert_eq!(validate(ADMIN_KEY.to_owned()).await.status(), 200);
    assert_eq!(validate(ADMIN_KEY.to_owned()).await.status(), 429);
    let seats = format!("/api/v1/licenses/{id}/seats");
    let r = server
        .post_json(ADMIN_KEY, &seats, &json!({"fingerprint": "m1"}))
        .await;
    assert_eq!(r.status(), 201);
    server
        .create_product(json!({"id": "initech", "requireSignatures": false}))
        .await;
    let initech = bound_key(server, "initech").await;
    let r = server
        .post_json(&initech, &seats, &json!({"fingerprint": "m2"}))
        .await;
    assert_eq!(r.status(), 404, "another product's license is not found");
    let acme = bound_key(server, "acme").await;
    let r = server.post_event(&acme, b"{}", None).await;
    assert_eq!(r.status(), 401, "unsigned, and acme requires signatures");
}

async fn bound_key(server: &Server, product: &str) -> String {
    server
        .create_key_with(
            json!({"name": product, "scopes": ["ingest", "validate"], "product": product}),
        )
        .await
}

async fn scrape(client: &reqwest::Client, metrics_url: &str) -> String {
    let r = client.get(metrics_url).send().await.unwrap();
    assert_eq!(r.status(), 200, "the metrics listener answers");
    r.text().await.unwrap()
}

/// Scrapes until every referenced name is exported (the Kafka lag and the
/// seat gauge are refreshed every few seconds), at most a minute.
async fn names_not_exported(metrics_url: &str, referenced: &BTreeSet<String>) -> Vec<String> {
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scrape = scrape(&client, metrics_url).await;
        let absent = missing(referenced, &scrape);
        if absent.is_empty() || Instant::now() > deadline {
            return absent;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of the unlabelled `name` once it equals `want`, or its last
/// value after 30 s.
async fn gauge_reaches(metrics_url: &str, name: &str, want: f64) -> Option<f64> {
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = scrape(&client, metrics_url)
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok());
        if value == Some(want) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let referenced = referenced_names();
    assert!(
        referenced.len() >= 30,
        "too few names found: {referenced:?}"
    );
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let root = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let config = config_file(root.path(), &bootstrap, &metrics_addr);
    let server = Server::start_with(
        &root.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    traffic(&server).await;
    produce(&bootstrap);
    let metrics_url = format!("http://{metrics_addr}/metrics");
    let absent = names_not_exported(&metrics_url, &referenced).await;
    assert!(
        absent.is_empty(),
        "named in deploy/ but not exported by keymeter: {absent:?}"
    );
    // The one seat taken (the other product's try was refused), once the
    // lease sweep has counted it.
    let seats = gauge_reaches(&metrics_url, "keymeter_seats_in_use", 1.0).await;
    assert_eq!(seats, Some(1.0), "keymeter_seats_in_use");
    server.stop();
}

#[test]
fn the_scan_finds_names_and_maps_histogram_series_to_their_family() {
    let mut names = BTreeSet::new();
    metric_names_in(
        "rate(keymeter_a_total[5m]) / x_keymeter_b + keymeter_h_bucket{le=\"1\"} keymeter_",
        &mut names,
    );
    assert_eq!(
        names.iter().map(String::as_str).collect::<Vec<_>>(),
        ["keymeter", "keymeter_a_total", "keymeter_h_bucket"]
    );
    let scrape = "# TYPE keymeter_a_total counter\n# TYPE keymeter_h histogram\n\
                  # TYPE keymeter_g gauge\n";
    let wanted: BTreeSet<String> = [
        "keymeter_a_total",
        "keymeter_h_bucket",
        "keymeter_h_count",
        "keymeter_g_sum",
        "keymeter_gone",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        missing(&wanted, scrape),
        ["keymeter_g_sum", "keymeter_gone"]
    );
}

/// The TOML under `keymeter.toml: |` in a ConfigMap manifest, unindented.
fn configmap_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "keymeter.toml: |");
    lines.next().expect("a keymeter.toml key");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_compose_and_kubernetes_configurations_are_accepted() {
    for (name, text) in [
        (
            "deploy/compose/keymeter.toml",
            repo_file("deploy/compose/keymeter.toml"),
        ),
        (
            "deploy/k8s/configmap.yaml",
            configmap_toml(&repo_file("deploy/k8s/configmap.yaml")),
        ),
    ] {
        let config: keymeter::config::Config =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let kafka = config.kafka.unwrap_or_else(|| panic!("{name}: no [kafka]"));
        assert_eq!(kafka.topics, [TOPIC], "{name}");
        assert_eq!(kafka.dead_letter_topic.as_deref(), Some(DLQ), "{name}");
    }
}

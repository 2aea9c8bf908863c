//! `keymeter status`: how a running server stands, from its own endpoints:
//! `/healthz` (alive), `/readyz` (ready; with a `read` key also the log
//! head, the applied position and the Kafka source) and `/metrics` (Kafka
//! lag per partition, when the key may read it). Exit status 0 when the
//! server is healthy and ready, 1 otherwise.

use std::io::Write;

use clap::Args;
use hyper::Method;
use serde_json::Value;

use crate::cli_license::request;

#[derive(Args)]
pub struct StatusArgs {
    /// Server base URL (plain http://).
    #[arg(long, env = "KEYMETER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API key with the read scope: adds the log position, the Kafka
    /// source and its lag (without one, only health and readiness).
    #[arg(long, env = "KEYMETER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Where /metrics is served when the server has a separate metrics
    /// listener (metrics_listen) [default: the --url server].
    #[arg(long)]
    metrics_url: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// What the server said, gathered.
#[derive(Debug, Default, PartialEq)]
pub struct Status {
    pub healthy: bool,
    pub ready: bool,
    pub readiness: Option<Value>,
    /// (topic, partition, lag records) from `keymeter_kafka_lag_records`.
    pub kafka_lag: Vec<(String, String, i64)>,
    pub problems: Vec<String>,
}

/// Runs `keymeter status`; 0 healthy and ready, 1 not (or unreachable).
pub fn status(args: StatusArgs) -> anyhow::Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(gather(&args));
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{:#}", to_json(&status))?;
    } else {
        write!(out, "{}", render(&status))?;
    }
    Ok(if status.healthy && status.ready {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

async fn gather(args: &StatusArgs) -> Status {
    let key = args.api_key.as_deref();
    let mut s = Status::default();
    match request(&args.url, Method::GET, "/healthz", None, None).await {
        Ok((200, _)) => s.healthy = true,
        Ok((code, body)) => s.problems.push(format!("/healthz answered {code}: {body}")),
        Err(e) => {
            s.problems.push(format!("{e:#}"));
            return s;
        }
    }
    match request(&args.url, Method::GET, "/readyz", key, None).await {
        Ok((code, body)) => {
            s.ready = code == 200;
            let parsed = serde_json::from_str::<Value>(&body).ok();
            if !s.ready {
                s.problems.push(format!("/readyz answered {code}: {body}"));
            }
            s.readiness = parsed;
        }
        Err(e) => s.problems.push(format!("/readyz: {e:#}")),
    }
    let kafka_configured = s
        .readiness
        .as_ref()
        .and_then(|r| r["kafka"]["state"].as_str())
        .is_some_and(|state| state != "not configured");
    if kafka_configured {
        let base = args.metrics_url.as_deref().unwrap_or(&args.url);
        match request(base, Method::GET, "/metrics", key, None).await {
            Ok((200, text)) => s.kafka_lag = kafka_lag(&text),
            Ok((code, _)) => s.problems.push(format!(
                "/metrics answered {code}: no Kafka lag (a read key is needed)"
            )),
            Err(e) => s.problems.push(format!("/metrics: {e:#}")),
        }
    }
    s
}

/// The `keymeter_kafka_lag_records{topic=…,partition=…} N` series of a
/// Prometheus text exposition.
pub fn kafka_lag(text: &str) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("keymeter_kafka_lag_records{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        let (Some(topic), Some(partition), Ok(lag)) = (
            label("topic"),
            label("partition"),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        out.push((topic, partition, lag as i64));
    }
    out
}

/// The human report.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let yes_no = |b: bool, yes: &str, no: &str| if b { yes } else { no }.to_owned();
    out += &format!("health:   {}\n", yes_no(s.healthy, "ok", "FAILING"));
    out += &format!("ready:    {}\n", yes_no(s.ready, "yes", "NO"));
    if let Some(r) = &s.readiness {
        if let Some(head) = r["logHeadSeq"].as_u64() {
            out += &format!(
                "log:      head seq {head}, applied seq {}\n",
                r["appliedSeq"].as_u64().unwrap_or(0)
            );
        }
        if let Some(state) = r["kafka"]["state"].as_str() {
            out += &format!("kafka:    {state}\n");
        }
        if let Some(e) = r["kafka"]["lastError"]["message"].as_str() {
            out += &format!("kafka last error: {e}\n");
        }
    }
    if !s.kafka_lag.is_empty() {
        let total: i64 = s.kafka_lag.iter().map(|(_, _, lag)| lag).sum();
        out += &format!("kafka lag: {total} records\n");
        for (topic, partition, lag) in &s.kafka_lag {
            out += &format!("  {topic}/{partition}: {lag}\n");
        }
    }
    for p in &s.problems {
        out += &format!("problem:  {p}\n");
    }
    out
}

fn to_json(s: &Status) -> Value {
    serde_json::json!({
        "healthy": s.healthy,
        "ready": s.ready,
        "readiness": s.readiness,
        "kafkaLag": s.kafka_lag.iter().map(|(t, p, lag)| serde_json::json!({
            "topic": t, "partition": p, "lag": lag,
        })).collect::<Vec<_>>(),
        "problems": s.problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_lag_is_read_per_partition_from_the_metrics_text() {
        let text = "# HELP keymeter_kafka_lag_records Records behind.\n\
            # TYPE keymeter_kafka_lag_records gauge\n\
            keymeter_kafka_lag_records{partition=\"0\",topic=\"usage\"} 12\n\
            keymeter_kafka_lag_records{partition=\"1\",topic=\"usage\"} 0\n\
            keymeter_kafka_lag_records_other 5\n\
            keymeter_log_head_seq 99\n";
        assert_eq!(
            kafka_lag(text),
            vec![
                ("usage".into(), "0".into(), 12),
                ("usage".into(), "1".into(), 0)
            ]
        );
    }

    #[test]
    fn the_report_names_what_is_wrong() {
        let s = Status {
            healthy: true,
            ready: false,
            readiness: Some(serde_json::json!({"code": "ENGINE_FAILED"})),
            kafka_lag: vec![("usage".into(), "0".into(), 7)],
            problems: vec!["/readyz answered 503".into()],
        };
        let text = render(&s);
        assert!(text.contains("health:   ok"), "{text}");
        assert!(text.contains("ready:    NO"), "{text}");
        assert!(text.contains("kafka lag: 7 records"), "{text}");
        assert!(text.contains("problem:  /readyz answered 503"), "{text}");
    }
}

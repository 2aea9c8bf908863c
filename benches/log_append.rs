//! Log append throughput against the disk's own limit.
//!
//! For each batch size, alternates rounds of (a) raw: the same pre-encoded frame bytes with
//! `write_all` + `sync_data` per batch, and (b) `Log::append_batch`, each into a fresh file
//! or log directory on the disk that holds `target/`. Prints records/s, MB/s, batches/s and
//! p50/p99 batch latency for both, and the log/raw ratio (issue target: >= 0.70).
//!
//! `KEYMETER_BENCH_QUICK=1` shrinks it to a sub-second smoke run.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keymeter::log::frame::{encode_batch, GENESIS_HASH};
use keymeter::log::{Log, LogConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCH_SIZES: [usize; 2] = [1_000, 10_000];

struct Plan {
    rounds: usize,
    /// Wall time spent per case (raw or log) per batch size, over all rounds.
    case_time: Duration,
    batches_per_round_max: usize,
}

impl Plan {
    fn from_env() -> Plan {
        if std::env::var("KEYMETER_BENCH_QUICK").is_ok_and(|v| v == "1") {
            Plan {
                rounds: 1,
                case_time: Duration::from_millis(80),
                batches_per_round_max: 5,
            }
        } else {
            Plan {
                rounds: 4,
                case_time: Duration::from_secs(3),
                batches_per_round_max: 2_000,
            }
        }
    }
}

/// Latencies and volume of one case (raw or log) at one batch size.
struct CaseStats {
    latency_us: Histogram<u64>,
    busy: Duration,
    batches: u64,
    records: u64,
    bytes: u64,
}

impl CaseStats {
    fn new() -> CaseStats {
        CaseStats {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            busy: Duration::ZERO,
            batches: 0,
            records: 0,
            bytes: 0,
        }
    }

    fn record(&mut self, elapsed: Duration, records: usize, bytes: usize) {
        let us = (elapsed.as_micros() as u64).clamp(1, 120_000_000);
        self.latency_us.record(us).expect("latency within bounds");
        self.busy += elapsed;
        self.batches += 1;
        self.records += records as u64;
        self.bytes += bytes as u64;
    }

    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.busy.as_secs_f64()
    }

    fn print(&self, name: &str) {
        let secs = self.busy.as_secs_f64();
        println!(
            "  {name:<4} {:>11.0} records/s {:>8.1} MB/s {:>8.1} batches/s   p50 {:>7.2} ms  \
             p99 {:>7.2} ms   ({} batches, {:.2} s)",
            self.records_per_s(),
            self.bytes as f64 / secs / 1e6,
            self.batches as f64 / secs,
            self.latency_us.value_at_quantile(0.50) as f64 / 1e3,
            self.latency_us.value_at_quantile(0.99) as f64 / 1e3,
            self.batches,
            secs,
        );
    }
}

/// CloudEvent-like JSON payloads of 200–300 bytes.
fn payloads(count: usize, rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let pad = rng.gen_range(0..100);
            format!(
                "{{\"specversion\":\"1.0\",\"id\":\"{:032x}\",\"source\":\"/tenants/{}/gateway\",\
                 \"type\":\"com.keymeter.usage.v1\",\"time\":\"2024-05-01T12:00:{:02}Z\",\
                 \"subject\":\"lic-{:08}\",\"data\":{{\"meter\":\"api.calls\",\"qty\":{},\
                 \"note\":\"{}\"}}}}",
                rng.gen::<u128>(),
                rng.gen_range(0..1000),
                i % 60,
                rng.gen_range(0..100_000_000),
                rng.gen_range(1..100),
                "x".repeat(pad),
            )
            .into_bytes()
        })
        .collect()
}

fn run_raw(dir: &Path, encoded: &[u8], records: usize, batches: usize, stats: &mut CaseStats) {
    let path = dir.join("raw.dat");
    let mut file = File::create(&path).expect("create raw file");
    for _ in 0..batches {
        let start = Instant::now();
        file.write_all(encoded).expect("raw write");
        file.sync_data().expect("raw fdatasync");
        stats.record(start.elapsed(), records, encoded.len());
    }
    drop(file);
    fs::remove_file(&path).expect("remove raw file");
}

fn run_log(
    dir: &Path,
    payloads: &[Vec<u8>],
    batch_bytes: usize,
    batches: usize,
    stats: &mut CaseStats,
) {
    let log_dir = dir.join("log");
    let (mut log, _) = Log::open(&log_dir, LogConfig::default()).expect("open log");
    for _ in 0..batches {
        let start = Instant::now();
        log.append_batch(payloads).expect("append batch");
        stats.record(start.elapsed(), payloads.len(), batch_bytes);
    }
    drop(log);
    fs::remove_dir_all(&log_dir).expect("remove log dir");
}

/// Mean time of one raw batch, to size the rounds.
fn calibrate(dir: &Path, encoded: &[u8], records: usize) -> Duration {
    let mut stats = CaseStats::new();
    run_raw(dir, encoded, records, 3, &mut stats);
    stats.busy / 3
}

/// CPU cost of framing alone (CRC32C + SHA-256 + copies), for explaining any gap.
fn encode_only_mb_per_s(payloads: &[Vec<u8>], buf: &mut Vec<u8>) -> f64 {
    let iterations = 5;
    let start = Instant::now();
    for _ in 0..iterations {
        buf.clear();
        encode_batch(GENESIS_HASH, 1, payloads, buf);
    }
    (buf.len() * iterations) as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let plan = Plan::from_env();
    let base = option_env!("CARGO_TARGET_TMPDIR").unwrap_or("target");
    fs::create_dir_all(base).expect("create bench tmp base");
    let tmp = tempfile::tempdir_in(base).expect("bench temp dir");
    println!(
        "log_append: dir {} ({} rounds per case)",
        tmp.path().display(),
        plan.rounds
    );
    let mut rng = StdRng::seed_from_u64(0x6b65_796d_6574_6572);

    for batch_records in BATCH_SIZES {
        let payloads = payloads(batch_records, &mut rng);
        let mut encoded = Vec::new();
        encode_batch(GENESIS_HASH, 1, &payloads, &mut encoded);
        let batch_mb = encoded.len() as f64 / 1e6;

        let per_batch = calibrate(tmp.path(), &encoded, batch_records);
        let per_round = plan.case_time.as_secs_f64() / plan.rounds as f64;
        let batches =
            ((per_round / per_batch.as_secs_f64()) as usize).clamp(2, plan.batches_per_round_max);

        let (mut raw, mut log) = (CaseStats::new(), CaseStats::new());
        for _ in 0..plan.rounds {
            run_raw(tmp.path(), &encoded, batch_records, batches, &mut raw);
            run_log(tmp.path(), &payloads, encoded.len(), batches, &mut log);
        }

        println!(
            "batch {batch_records} records ({batch_mb:.2} MB/batch, {} rounds x {batches} batches):",
            plan.rounds
        );
        raw.print("raw");
        log.print("log");
        println!(
            "  ratio log/raw {:.3}   (framing alone: {:.0} MB/s)",
            log.records_per_s() / raw.records_per_s(),
            encode_only_mb_per_s(&payloads, &mut encoded),
        );
    }
}

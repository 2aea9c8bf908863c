//! Log append throughput against the disk's own limit.
//!
//! For each batch size, alternates short slices of (a) raw: the same pre-encoded frame bytes
//! with `write_all` + `sync_data` per batch, and (b) `Log::append_batch`, into a file and a
//! log directory on the disk that holds `target/`. Prints records/s, MB/s, batches/s and
//! p50/p99 batch latency for both, and the log/raw ratio (issue target: >= 0.70), and the
//! load average before and after.
//!
//! `KEYMETER_BENCH_QUICK=1` shrinks it to a sub-second smoke run.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keymeter::log::frame::{encode_batch, GENESIS_HASH};
use keymeter::log::{Log, LogConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Both are sizes the engine writes: batches hold 4,000–16,000 records under load, fewer
/// when it is quiet. Each is judged against the target.
const BATCH_SIZES: [usize; 2] = [1_000, 10_000];
/// The target: log append records/s over raw write + fdatasync of the same bytes.
const TARGET_LOG_TO_RAW: f64 = 0.70;

struct Plan {
    /// Wall time per batch size (both cases together), excluding setup.
    case_time: Duration,
    /// Raw and log alternate every this many milliseconds of work, so drift in the shared
    /// disk and CPUs hits both about equally.
    slice_time: Duration,
}

impl Plan {
    fn from_env() -> Plan {
        if common::quick() {
            Plan {
                case_time: Duration::from_millis(100),
                slice_time: Duration::from_millis(20),
            }
        } else {
            Plan {
                case_time: Duration::from_secs(8),
                slice_time: Duration::from_millis(100),
            }
        }
    }
}

/// Both cases start over (untimed) once they have written this much, bounding disk use.
const RESET_BYTES: u64 = 512 * 1024 * 1024;

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
            common::quantile_k(&self.latency_us, 0.50),
            common::quantile_k(&self.latency_us, 0.99),
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

/// Case (a): pre-encoded bytes, `write_all` + `sync_data` per batch.
struct RawCase {
    path: PathBuf,
    file: File,
    written: u64,
}

impl RawCase {
    fn new(dir: &Path) -> RawCase {
        let path = dir.join("raw.dat");
        let file = File::create(&path).expect("create raw file");
        RawCase {
            path,
            file,
            written: 0,
        }
    }

    fn run(&mut self, encoded: &[u8], records: usize, batches: usize, stats: &mut CaseStats) {
        for _ in 0..batches {
            if self.written >= RESET_BYTES {
                self.file = File::create(&self.path).expect("recreate raw file");
                self.written = 0;
            }
            let start = Instant::now();
            self.file.write_all(encoded).expect("raw write");
            self.file.sync_data().expect("raw fdatasync");
            stats.record(start.elapsed(), records, encoded.len());
            self.written += encoded.len() as u64;
        }
    }
}

/// Case (b): `Log::append_batch` with the default config (segment rolls included).
struct LogCase {
    dir: PathBuf,
    log: Option<Log>,
    written: u64,
}

impl LogCase {
    fn new(dir: &Path) -> LogCase {
        let dir = dir.join("log");
        let (log, _) = Log::open(&dir, LogConfig::default()).expect("open log");
        LogCase {
            dir,
            log: Some(log),
            written: 0,
        }
    }

    fn run(
        &mut self,
        payloads: &[Vec<u8>],
        batch_bytes: usize,
        batches: usize,
        stats: &mut CaseStats,
    ) {
        for _ in 0..batches {
            if self.written >= RESET_BYTES {
                drop(self.log.take());
                fs::remove_dir_all(&self.dir).expect("remove log dir");
                self.log = Some(
                    Log::open(&self.dir, LogConfig::default())
                        .expect("reopen log")
                        .0,
                );
                self.written = 0;
            }
            let log = self.log.as_mut().expect("log is open");
            let start = Instant::now();
            log.append_batch(payloads).expect("append batch");
            stats.record(start.elapsed(), payloads.len(), batch_bytes);
            self.written += batch_bytes as u64;
        }
    }
}

/// Mean time of one raw batch, to size the slices.
fn calibrate(raw: &mut RawCase, encoded: &[u8], records: usize) -> Duration {
    let mut stats = CaseStats::new();
    raw.run(encoded, records, 5, &mut stats);
    stats.busy / 5
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
    let tmp = common::temp_dir();
    println!(
        "log_append: dir {}, {:?} per batch size, raw/log alternating every ~{:?}{}",
        tmp.path().display(),
        plan.case_time,
        plan.slice_time,
        load_average()
    );
    let mut rng = StdRng::seed_from_u64(0x6b65_796d_6574_6572);

    for batch_records in BATCH_SIZES {
        let payloads = payloads(batch_records, &mut rng);
        let mut encoded = Vec::new();
        encode_batch(GENESIS_HASH, 1, &payloads, &mut encoded);
        let (mut raw_case, mut log_case) = (RawCase::new(tmp.path()), LogCase::new(tmp.path()));

        let per_batch = calibrate(&mut raw_case, &encoded, batch_records).as_secs_f64();
        let batches_per_slice = ((plan.slice_time.as_secs_f64() / per_batch) as usize).max(1);
        let (mut raw, mut log) = (CaseStats::new(), CaseStats::new());
        while raw.busy + log.busy < plan.case_time {
            raw_case.run(&encoded, batch_records, batches_per_slice, &mut raw);
            log_case.run(&payloads, encoded.len(), batches_per_slice, &mut log);
        }
        drop((raw_case, log_case));

        println!(
            "batch {batch_records} records, {:.2} MB/batch, avg payload {} B:",
            encoded.len() as f64 / 1e6,
            payloads.iter().map(Vec::len).sum::<usize>() / batch_records
        );
        raw.print("raw");
        log.print("log");
        let ratio = log.records_per_s() / raw.records_per_s();
        println!(
            "  ratio log/raw {ratio:.3} records/s   target >= {TARGET_LOG_TO_RAW:.2} ({}), \
             {:.3} at p50   (framing alone: {:.0} MB/s)",
            common::met(ratio >= TARGET_LOG_TO_RAW),
            raw.latency_us.value_at_quantile(0.5) as f64
                / log.latency_us.value_at_quantile(0.5) as f64,
            encode_only_mb_per_s(&payloads, &mut encoded),
        );
    }
    println!("done{}", load_average());
}

/// `", load average 1.23 0.98 0.75"` where `/proc/loadavg` exists: the CPUs and disk are
/// shared, so a ratio means little without the load it was measured under.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let fields: Vec<&str> = l.split_whitespace().take(3).collect();
            (fields.len() == 3).then(|| format!(", load average {}", fields.join(" ")))
        })
        .unwrap_or_default()
}

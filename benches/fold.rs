//! Fold throughput on one core, in memory, next to the machine's limit for the same work.
//!
//! Workload: a SUM meter with MINUTE windows and two `groupBy` keys (4 models ×
//! 3 regions), 1,000 subjects, events spread over 3 hours in roughly increasing time.
//! Cases, interleaved round by round so drift hits all of them alike:
//! - baseline: a plain std `HashMap<u64, i128>` `+=` over one packed key per event,
//!   with the same counter pattern (what any fold of these events must at least do);
//! - (a) `Fold::apply` of pre-extracted observations (issue target >= 5,000,000
//!   events/s): into one `Fold` for the whole set (800k counters, so mostly the cost
//!   of growing fresh memory); into one reused `Fold` cleared every 4,096 events; the
//!   same plus `drain_sorted` per batch (the flush's key materialisation and sort);
//!   and with every event owning its observation (input cold in cache);
//!   and the engine's case, which the target is judged on: every event owning its
//!   observation, folded 4,096 at a time and drained sorted after each batch, as the
//!   counters projection folds a batch of records and merges it into its overlay;
//! - (b) `CompiledMeter::extract` + `Fold::apply` from each event's `data` JSON text;
//! - (c) the same events through a UNIQUE_COUNT meter (distinct `prompt_id`s per
//!   subject, model and HOUR window: 12,000 counters of about 80 values each), as
//!   the engine's case and from `data` text, which adds hashing each value.
//!
//! Prints the median events/s of each case, the fold/baseline ratios and, next to
//! each figure, its target. `KEYMETER_BENCH_QUICK=1` shrinks it to a sub-second
//! smoke run.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use keymeter::meter::{CompiledMeter, Fold, MeterDef, Observation, UniqueKey};
use serde_json::json;

const SUBJECTS: usize = 1_000;
const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-3-70b"];
const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];
const SPAN_MS: i64 = 3 * 3_600_000;
const START_MS: i64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z
const BATCH_EVENTS: usize = 4_096;
/// Stands for a data directory's UNIQUE_COUNT key; its value does not
/// change the cost.
const KEY: UniqueKey = UniqueKey::from_bytes(*b"fold-bench-key-0");

struct Plan {
    events: usize,
    rounds: usize,
}

impl Plan {
    fn from_env() -> Plan {
        if common::quick() {
            Plan {
                events: 20_000,
                rounds: 3,
            }
        } else {
            Plan {
                events: 1_000_000,
                rounds: 7,
            }
        }
    }
}

/// One event of the run. Subjects and payloads index small pools, so the input stays
/// cache-resident as it is in the engine, where `data` was parsed and extracted just
/// before the fold; the counter pattern (subject × minute × group) is not pooled.
struct Event {
    subject: usize,
    time_ms: i64,
    payload: usize,
    /// The same counter identity packed for the baseline: subject, minute, group.
    packed_key: u64,
}

struct Input {
    subjects: Vec<String>,
    /// Event `data` objects, and the same extracted by the meter.
    /// Event `data` as JSON text, as events carry it.
    payloads: Vec<String>,
    observations: Vec<Observation>,
    /// The same payloads as the UNIQUE_COUNT meter reads them.
    unique_observations: Vec<Observation>,
    tokens: Vec<i128>,
    events: Vec<Event>,
}

const PAYLOADS: usize = 4_096;

/// xorshift64*: deterministic input without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn meter() -> CompiledMeter {
    let def: MeterDef = serde_json::from_value(json!({
        "slug": "llm_tokens",
        "eventType": "prompt",
        "aggregation": "SUM",
        "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model", "region": "$.region"},
        "windowSize": "MINUTE"
    }))
    .expect("meter json");
    def.validate().expect("valid meter")
}

/// Distinct prompts per subject, model and hour: sets that grow with every event.
fn unique_meter() -> CompiledMeter {
    let def: MeterDef = serde_json::from_value(json!({
        "slug": "prompts",
        "eventType": "prompt",
        "aggregation": "UNIQUE_COUNT",
        "valueProperty": "$.prompt_id",
        "groupBy": {"model": "$.model"},
        "windowSize": "HOUR"
    }))
    .expect("meter json");
    def.validate().expect("valid meter")
}

fn input(meter: &CompiledMeter, unique: &CompiledMeter, count: usize) -> Input {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let subjects: Vec<String> = (0..SUBJECTS).map(|i| format!("customer-{i:05}")).collect();
    let mut groups = Vec::with_capacity(PAYLOADS);
    let mut tokens = Vec::with_capacity(PAYLOADS);
    let payloads: Vec<String> = (0..PAYLOADS)
        .map(|i| {
            let model = rng.below(MODELS.len() as u64) as usize;
            let region = rng.below(REGIONS.len() as u64) as usize;
            let amount = 1 + rng.below(4_000) as i64;
            groups.push((model * REGIONS.len() + region) as u64);
            tokens.push(i128::from(amount) * 1_000_000_000);
            json!({
                "tokens": amount,
                "model": MODELS[model],
                "region": REGIONS[region],
                "prompt_id": format!("p-{i}"),
            })
            .to_string()
        })
        .collect();
    let observations = payloads
        .iter()
        .map(|data| meter.extract(Some(data), &KEY).expect("extractable"))
        .collect();
    let unique_observations = payloads
        .iter()
        .map(|data| unique.extract(Some(data), &KEY).expect("extractable"))
        .collect();
    let events = (0..count)
        .map(|i| {
            // Roughly increasing event time with up to a minute of jitter.
            let base = START_MS + SPAN_MS * i as i64 / count as i64;
            let time_ms = base + rng.below(60_000) as i64;
            let subject = rng.below(SUBJECTS as u64) as usize;
            let payload = rng.below(PAYLOADS as u64) as usize;
            let minute = (time_ms - START_MS) / 60_000;
            Event {
                subject,
                time_ms,
                payload,
                packed_key: (subject as u64) << 32 | (minute as u64) << 8 | groups[payload],
            }
        })
        .collect();
    Input {
        subjects,
        payloads,
        observations,
        unique_observations,
        tokens,
        events,
    }
}

fn baseline(input: &Input) -> usize {
    let mut counters: HashMap<u64, i128> = HashMap::new();
    for e in &input.events {
        *counters.entry(e.packed_key).or_insert(0) += input.tokens[e.payload];
    }
    black_box(&counters);
    counters.len()
}

fn fold_events(meter: &CompiledMeter, input: &Input, fold: &mut Fold, events: &[Event]) {
    for e in events {
        fold.apply(
            meter,
            &input.subjects[e.subject],
            e.time_ms,
            &input.observations[e.payload],
        );
    }
}

fn fold_observations(meter: &CompiledMeter, input: &Input) -> usize {
    let mut fold = Fold::new();
    fold_events(meter, input, &mut fold, &input.events);
    black_box(&fold);
    fold.len()
}

fn fold_observations_batched(meter: &CompiledMeter, input: &Input) -> usize {
    let mut fold = Fold::new();
    let mut counters = 0;
    for batch in input.events.chunks(BATCH_EVENTS) {
        fold.clear();
        fold_events(meter, input, &mut fold, batch);
        black_box(&fold);
        counters += fold.len();
    }
    counters
}

/// As the engine flushes: fold a batch, then take its counters in key order.
fn fold_and_drain_batched(meter: &CompiledMeter, input: &Input) -> usize {
    let mut fold = Fold::new();
    let mut counters = 0;
    for batch in input.events.chunks(BATCH_EVENTS) {
        fold_events(meter, input, &mut fold, batch);
        counters += black_box(fold.drain_sorted()).len();
    }
    counters
}

/// Like `fold_observations`, but every event owns its observation (cold in cache).
fn fold_owned_observations(meter: &CompiledMeter, input: &Input, owned: &[Observation]) -> usize {
    let mut fold = Fold::new();
    for (e, obs) in input.events.iter().zip(owned) {
        fold.apply(meter, &input.subjects[e.subject], e.time_ms, obs);
    }
    black_box(&fold);
    fold.len()
}

/// The engine's case: owned (cold) observations, a batch folded and then
/// drained in key order, as the counters projection merges it into its overlay.
fn fold_owned_and_drain_batched(
    meter: &CompiledMeter,
    input: &Input,
    owned: &[Observation],
) -> usize {
    let mut fold = Fold::new();
    let mut counters = 0;
    for (events, observations) in input
        .events
        .chunks(BATCH_EVENTS)
        .zip(owned.chunks(BATCH_EVENTS))
    {
        for (e, obs) in events.iter().zip(observations) {
            fold.apply(meter, &input.subjects[e.subject], e.time_ms, obs);
        }
        counters += black_box(fold.drain_sorted()).len();
    }
    counters
}

fn extract_and_fold(meter: &CompiledMeter, input: &Input) -> usize {
    let mut fold = Fold::new();
    for e in &input.events {
        let obs = meter
            .extract(Some(&input.payloads[e.payload]), &KEY)
            .expect("extractable");
        fold.apply(meter, &input.subjects[e.subject], e.time_ms, &obs);
    }
    black_box(&fold);
    fold.len()
}

/// What a case's figure is held to.
#[derive(Clone, Copy, PartialEq)]
enum Judged {
    /// The target, on the case that does what the engine does.
    Target,
    /// The same target shown for comparison: an easier case than the engine's.
    Easier,
    /// No target: a reference figure.
    None,
}

struct Case {
    name: &'static str,
    judged: Judged,
    times: Vec<Duration>,
    counters: usize,
}

impl Case {
    fn new(name: &'static str, judged: Judged) -> Case {
        Case {
            name,
            judged,
            times: Vec::new(),
            counters: 0,
        }
    }

    fn run(&mut self, work: impl FnOnce() -> usize) {
        let started = Instant::now();
        self.counters = work();
        self.times.push(started.elapsed());
    }

    fn events_per_s(&self, events: usize) -> f64 {
        let mut times = self.times.clone();
        times.sort();
        events as f64 / times[times.len() / 2].as_secs_f64()
    }
}

fn main() {
    let plan = Plan::from_env();
    let meter = meter();
    let unique = unique_meter();
    let input = input(&meter, &unique, plan.events);
    let owned: Vec<Observation> = input
        .events
        .iter()
        .map(|e| input.observations[e.payload].clone())
        .collect();
    let owned_unique: Vec<Observation> = input
        .events
        .iter()
        .map(|e| input.unique_observations[e.payload].clone())
        .collect();

    let mut base = Case::new("baseline HashMap<u64,i128> +=", Judged::None);
    let mut whole = Case::new("(a) fold observations, one Fold", Judged::Easier);
    let mut batched = Case::new("(a) fold observations, 4096/batch", Judged::Easier);
    let mut drained = Case::new("(a) fold + drain_sorted, 4096/batch", Judged::Easier);
    let mut cold = Case::new("(a) fold owned (cold) observations", Judged::Easier);
    let mut engine = Case::new("(a) engine: owned + drain, 4096/batch", Judged::Target);
    let mut extracted = Case::new("(b) extract + fold from data text", Judged::None);
    let mut unique_engine = Case::new("(c) UNIQUE_COUNT engine: owned + drain", Judged::None);
    let mut unique_extracted = Case::new("(c) UNIQUE_COUNT extract + fold", Judged::None);
    for _ in 0..plan.rounds {
        base.run(|| baseline(&input));
        whole.run(|| fold_observations(&meter, &input));
        batched.run(|| fold_observations_batched(&meter, &input));
        drained.run(|| fold_and_drain_batched(&meter, &input));
        cold.run(|| fold_owned_observations(&meter, &input, &owned));
        engine.run(|| fold_owned_and_drain_batched(&meter, &input, &owned));
        extracted.run(|| extract_and_fold(&meter, &input));
        unique_engine.run(|| fold_owned_and_drain_batched(&unique, &input, &owned_unique));
        unique_extracted.run(|| extract_and_fold(&unique, &input));
    }

    println!(
        "fold bench: {} events, {SUBJECTS} subjects, {} groups, {} h of MINUTE windows, \
         SUM and UNIQUE_COUNT meters, cases in turn, median of {} rounds, 1 core",
        plan.events,
        MODELS.len() * REGIONS.len(),
        SPAN_MS / 3_600_000,
        plan.rounds
    );
    let target = 5_000_000.0;
    let baseline_rate = base.events_per_s(plan.events);
    for case in [
        &base,
        &whole,
        &batched,
        &drained,
        &cold,
        &engine,
        &extracted,
        &unique_engine,
        &unique_extracted,
    ] {
        let rate = case.events_per_s(plan.events);
        let judged = match case.judged {
            Judged::Target => common::at_least(rate, target, "events/s"),
            Judged::Easier => format!("(easier than the engine's case; target {target:.0})"),
            Judged::None => "no target".to_owned(),
        };
        println!(
            "  {:<38} {:>12.0} events/s  {:>7.1} ns/event  {:>9} counters  {:.2}x baseline  {judged}",
            case.name,
            rate,
            1e9 / rate,
            case.counters,
            rate / baseline_rate
        );
    }
}

//! Heap bytes per identity and time per claim of the dedup index at 1M and
//! 10M identities, beside the layout it replaced (a `HashMap` of identity
//! to event time and tenant, plus the identities listed per hour for
//! pruning) measured in the same run. Claims are timed three ways: in a
//! tight loop (the CPU overlaps the cache misses of independent claims as
//! far as it can run ahead), in a loop that prefetches `PREFETCH_AHEAD`
//! identities ahead (as the writer does), and one lookup waiting for the
//! last (the latency of one claim, what a claim costs amid the writer's
//! other work). Figures, not a test of speed: run
//!
//! ```sh
//! cargo test --release --test dedup_memory -- --ignored --nocapture
//! ```
//!
//! The one assertion is on bytes: the table's slots stay within 40 bytes
//! per identity held.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use keymeter::event::{DedupKey, DedupKeyBuildHasher};
use keymeter::projection::dedup::{DedupIndex, PREFETCH_AHEAD};

/// The system allocator, counting the bytes live and the most ever live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated now, and the peak since the last call.
fn heap() -> (usize, usize) {
    let live = LIVE.load(Ordering::Relaxed);
    (live, PEAK.swap(live, Ordering::Relaxed))
}

const T0: i64 = 1_700_000_000_000;
const HOUR_MS: i64 = 3_600_000;

/// `n` identities as the decoder makes them, with event times spread over
/// two days and three tenants.
fn claims(n: usize) -> Vec<(DedupKey, i64, u32)> {
    (0..n)
        .map(|i| {
            let key = DedupKey::new("bench", &format!("evt-{i}"));
            (
                key,
                T0 + (i as i64 * 48 * HOUR_MS) / n as i64,
                (i % 3) as u32,
            )
        })
        .collect()
}

/// The layout before: identity → (event time, tenant), and per hour the
/// identities of that hour.
#[derive(Default)]
struct HashMapIndex {
    keys: HashMap<DedupKey, (i64, u32), DedupKeyBuildHasher>,
    buckets: BTreeMap<i64, Vec<DedupKey>>,
    held: Vec<u64>,
}

impl HashMapIndex {
    fn claim_one(&mut self, key: DedupKey, time_ms: i64, tenant: u32) -> bool {
        match self.keys.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((time_ms, tenant));
                self.held[tenant as usize] += 1;
                let hour = time_ms.div_euclid(HOUR_MS);
                self.buckets.entry(hour).or_default().push(key);
                true
            }
        }
    }
}

/// ns per claim of `claim` over `claims`, all new and then all repeated;
/// `claim` gets the index of the claim too.
fn time_claims(
    claims: &[(DedupKey, i64, u32)],
    mut claim: impl FnMut(usize, DedupKey, i64, u32) -> bool,
) -> (f64, f64) {
    let mut run = |want: bool| {
        let started = Instant::now();
        for (i, &(k, t, tenant)) in claims.iter().enumerate() {
            assert_eq!(claim(i, k, t, tenant), want);
        }
        started.elapsed().as_nanos() as f64 / claims.len() as f64
    };
    (run(true), run(false))
}

/// ns per lookup when each lookup's identity depends on the last answer.
fn time_dependent(claims: &[(DedupKey, i64, u32)], contains: impl Fn(&DedupKey) -> bool) -> f64 {
    let lookups = claims.len() / 4;
    let started = Instant::now();
    let mut i = 0;
    for _ in 0..lookups {
        let held = contains(&claims[i].0);
        i = (i + 7_919 + usize::from(!held)) % claims.len();
    }
    started.elapsed().as_nanos() as f64 / lookups as f64
}

/// ns per claim, new and repeated, of an index claiming `claims` with
/// prefetches as the writer does.
fn prefetched(claims: &[(DedupKey, i64, u32)]) -> (f64, f64) {
    let mut d = DedupIndex::in_memory(usize::MAX);
    time_claims(claims, |i, k, t, _| {
        if let Some(ahead) = claims.get(i + PREFETCH_AHEAD) {
            d.prefetch(&ahead.0);
        }
        d.claim_one(k, t, 0)
    })
}

fn measure(n: usize) {
    let claims = claims(n);
    let per = |bytes: usize| bytes as f64 / n as f64;

    let (base, _) = heap();
    let mut d = DedupIndex::in_memory(usize::MAX);
    let tenants: Vec<u32> = ["", "key:a", "product:b"]
        .iter()
        .map(|t| d.tenant(t))
        .collect();
    let (new_ns, dup_ns) =
        time_claims(&claims, |_, k, t, x| d.claim_one(k, t, tenants[x as usize]));
    let (live, peak) = heap();
    println!(
        "{n} identities, table: {:.1} B/identity in slots, heap {:.1} B/identity \
         (peak {:.1}), claim {new_ns:.0} ns new, {dup_ns:.0} ns repeated",
        d.bytes_per_identity(),
        per(live - base),
        per(peak - base),
    );
    assert!(d.bytes_per_identity() <= 40.0);
    let latency = time_dependent(&claims, |k| d.contains(k));
    let (new_ns, dup_ns) = prefetched(&claims);
    println!(
        "  prefetched {PREFETCH_AHEAD} ahead: claim {new_ns:.0} ns new, {dup_ns:.0} ns repeated; \
         one lookup waiting for the last: {latency:.0} ns"
    );

    let started = Instant::now();
    let snapshot = d.snapshot();
    let copy_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let mut bytes = Vec::new();
    snapshot.write(&mut bytes).unwrap();
    let write_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let mut loaded = DedupIndex::in_memory(usize::MAX);
    loaded.read_snapshot(&bytes).unwrap();
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    drop((bytes, loaded));
    let started = Instant::now();
    let removed = d.prune(T0 + 24 * HOUR_MS);
    let prune_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "  snapshot: copy {copy_ms:.0} ms (writer), sort+encode {write_ms:.0} ms (background), \
         load {load_ms:.0} ms; prune of {removed}: {prune_ms:.0} ms"
    );
    drop(d);

    let (base, _) = heap();
    let mut old = HashMapIndex {
        held: vec![0; 3],
        ..HashMapIndex::default()
    };
    let (new_ns, dup_ns) = time_claims(&claims, |_, k, t, x| old.claim_one(k, t, x));
    let (live, peak) = heap();
    let latency = time_dependent(&claims, |k| old.keys.contains_key(k));
    println!(
        "{n} identities, HashMap + hour lists: heap {:.1} B/identity (peak {:.1}), \
         claim {new_ns:.0} ns new, {dup_ns:.0} ns repeated; one lookup waiting for the last: \
         {latency:.0} ns",
        per(live - base),
        per(peak - base),
    );
}

#[test]
#[ignore = "figures: run in release, see the module's doc"]
fn bytes_and_time_per_identity_at_1m_and_10m() {
    for n in [1_000_000, 10_000_000] {
        measure(n);
    }
}

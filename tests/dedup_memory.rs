//! Heap bytes per identity and time per claim of the dedup index at 1M and
//! 10M identities, beside the layout it replaced (a `HashMap` of identity
//! to event time and tenant, plus the identities listed per hour for
//! pruning) measured in the same run. Claims are timed in a tight loop,
//! where the CPU overlaps the cache misses of many independent claims, and
//! amid other work per event (a SHA-256 of 1 KiB, about what the writer
//! spends on an event besides its claim), where it cannot; the table also
//! with the writer's prefetch of the identities `PREFETCH_AHEAD` events
//! on. Figures, not a test of speed: run
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
use keymeter::projection::dedup::{DedupIndex, SnapshotRoom, PREFETCH_AHEAD};
use sha2::{Digest, Sha256};

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

/// Work standing in for the rest of an event's path through the writer.
fn other_work(i: usize) -> u8 {
    let mut buf = [0u8; 1024];
    buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Sha256::digest(buf)[0]
}

/// How a run of claims is timed.
#[derive(Clone, Copy)]
struct Run {
    /// Each claim after [`other_work`].
    amid_work: bool,
    /// The identity `PREFETCH_AHEAD` claims on prefetched first.
    prefetch: bool,
}

/// ns per event of claiming `claims` into a fresh index (new identities),
/// then again (repeats), less the ns of the other work alone.
fn time_table(claims: &[(DedupKey, i64, u32)], run: Run, work_ns: f64) -> (DedupIndex, f64, f64) {
    let mut d = DedupIndex::in_memory(usize::MAX);
    let tenants: Vec<u32> = ["", "key:a", "product:b"]
        .iter()
        .map(|t| d.tenant(t))
        .collect();
    let mut pass = |want: bool| {
        let started = Instant::now();
        let mut sink = 0u8;
        for (i, &(k, t, tenant)) in claims.iter().enumerate() {
            if run.prefetch {
                if let Some(ahead) = claims.get(i + PREFETCH_AHEAD) {
                    d.prefetch(&ahead.0);
                }
            }
            if run.amid_work {
                sink ^= other_work(i);
            }
            assert_eq!(d.claim_one(k, t, tenants[tenant as usize]), want);
        }
        std::hint::black_box(sink);
        started.elapsed().as_nanos() as f64 / claims.len() as f64 - work_ns
    };
    let (new_ns, dup_ns) = (pass(true), pass(false));
    (d, new_ns, dup_ns)
}

/// [`time_table`] for the layout before.
fn time_hash_map(
    claims: &[(DedupKey, i64, u32)],
    run: Run,
    work_ns: f64,
) -> (HashMapIndex, f64, f64) {
    let mut old = HashMapIndex {
        held: vec![0; 3],
        ..HashMapIndex::default()
    };
    let mut pass = |want: bool| {
        let started = Instant::now();
        let mut sink = 0u8;
        for (i, &(k, t, tenant)) in claims.iter().enumerate() {
            if run.amid_work {
                sink ^= other_work(i);
            }
            assert_eq!(old.claim_one(k, t, tenant), want);
        }
        std::hint::black_box(sink);
        started.elapsed().as_nanos() as f64 / claims.len() as f64 - work_ns
    };
    let (new_ns, dup_ns) = (pass(true), pass(false));
    (old, new_ns, dup_ns)
}

fn work_ns(n: usize) -> f64 {
    let started = Instant::now();
    let sink = (0..n).fold(0u8, |s, i| s ^ other_work(i));
    std::hint::black_box(sink);
    started.elapsed().as_nanos() as f64 / n as f64
}

/// Copy, write and load of the snapshot of `d`, and the prune of half of it.
fn snapshot_and_prune(mut d: DedupIndex) {
    let ms = |started: Instant| started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    drop(d.snapshot());
    let fresh_ms = ms(started);
    let started = Instant::now();
    let room = SnapshotRoom::touched(d.len() + 4096);
    let room_ms = ms(started);
    let started = Instant::now();
    let snapshot = d.snapshot_in(room);
    let copy_ms = ms(started);
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
        "  snapshot: room {room_ms:.0} ms (background), copy into it {copy_ms:.0} ms (writer; \
         {fresh_ms:.0} ms into fresh memory), sort+encode {write_ms:.0} ms (background), \
         load {load_ms:.0} ms; prune of {removed}: {prune_ms:.0} ms"
    );
}

fn measure(n: usize) {
    let claims = claims(n);
    let per = |bytes: usize| bytes as f64 / n as f64;
    let tight = Run {
        amid_work: false,
        prefetch: false,
    };
    let work = work_ns(n / 10);
    println!("{n} identities; the other work alone: {work:.0} ns per event");

    let (base, _) = heap();
    let (d, new_ns, dup_ns) = time_table(&claims, tight, 0.0);
    let (live, peak) = heap();
    println!(
        "  table: {:.1} B/identity in slots, heap {:.1} B/identity (peak {:.1}); \
         tight loop: {new_ns:.0} ns new, {dup_ns:.0} ns repeated",
        d.bytes_per_identity(),
        per(live - base),
        per(peak - base),
    );
    assert!(d.bytes_per_identity() <= 40.0);
    snapshot_and_prune(d);
    for prefetch in [false, true] {
        let run = Run {
            amid_work: true,
            prefetch,
        };
        let (_, new_ns, dup_ns) = time_table(&claims, run, work);
        println!(
            "  table amid other work{}: {new_ns:.0} ns new, {dup_ns:.0} ns repeated",
            if prefetch { ", prefetched" } else { "" }
        );
    }

    let (base, _) = heap();
    let (old, new_ns, dup_ns) = time_hash_map(&claims, tight, 0.0);
    let (live, peak) = heap();
    drop(old);
    println!(
        "  HashMap + hour lists: heap {:.1} B/identity (peak {:.1}); \
         tight loop: {new_ns:.0} ns new, {dup_ns:.0} ns repeated",
        per(live - base),
        per(peak - base),
    );
    let amid = Run {
        amid_work: true,
        prefetch: false,
    };
    let (_, new_ns, dup_ns) = time_hash_map(&claims, amid, work);
    println!("  HashMap amid other work: {new_ns:.0} ns new, {dup_ns:.0} ns repeated");
}

#[test]
#[ignore = "figures: run in release, see the module's doc"]
fn bytes_and_time_per_identity_at_1m_and_10m() {
    for n in [1_000_000, 10_000_000] {
        measure(n);
    }
}

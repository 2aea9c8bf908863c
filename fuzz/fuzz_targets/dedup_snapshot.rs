//! The dedup snapshot file (`state/dedup.snapshot`), `KMDEDUP3` with its
//! tenant and hour tables, or the older `KMDEDUP2` and `KMDEDUP1`.
//!
//! Input: the file's bytes, tried as they are and again with a correct
//! CRC32C appended (so mutations get past the checksum and reach the
//! fields behind it). Properties: never panics and never allocates
//! beyond what the file's length can hold; a refused file is an
//! `InvalidData` error (the index is then rebuilt from the log); a loaded
//! `KMDEDUP3` file writes back byte for byte (its every part has one
//! order); a loaded file of any version writes back to a snapshot that
//! loads to the same identities, hours, per-hour and per-tenant counts and
//! sequence number.

#![no_main]

use keymeter::projection::dedup::DedupIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 8 {
        let mut sealed = data.to_vec();
        sealed.extend_from_slice(&crc32c::crc32c(&data[8..]).to_le_bytes());
        check(&sealed);
    }
});

fn check(data: &[u8]) {
    let mut index = DedupIndex::in_memory(usize::MAX);
    if let Err(e) = index.read_snapshot(data) {
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        return;
    }
    let mut written = Vec::new();
    index.write_snapshot(&mut written).unwrap();
    if data.starts_with(b"KMDEDUP3") {
        assert!(written == data, "a loaded KMDEDUP3 file writes back as it was");
    }
    let mut again = DedupIndex::in_memory(usize::MAX);
    again.read_snapshot(&written).unwrap();
    assert_eq!(again.applied(), index.applied());
    assert_eq!(again.entries(), index.entries());
    assert_eq!(again.hour_counts(), index.hour_counts());
    for (_, tenant, _) in index.hour_counts() {
        let (a, b) = (index.tenants(), again.tenants());
        let held = |t: &keymeter::projection::dedup::Tenants| {
            let mut probe = t.clone();
            let ix = probe.intern(tenant);
            probe.held(ix)
        };
        assert_eq!(held(a), held(b), "{tenant:?}");
    }
}

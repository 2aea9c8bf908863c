//! Golden bytes for every format keymeter persists: log records, log frames
//! and segment headers, projection trees and the dedup snapshot, the audit
//! anchor line, the keyring and the master key file. Each fixed value must
//! encode to its golden bytes, and the golden bytes must decode to the value,
//! so reordering an enum, renaming or retyping a field, or changing a codec
//! fails here before an old data directory stops opening (or opens wrong).
//!
//! A deliberate format change updates the golden here *and* keeps a decoder
//! for the old bytes (a new version byte), so both sides stay pinned.

mod counters;
mod documents;
mod keys;
mod log;
mod projections;
mod records;

/// Compares encodings with their golden bytes and collects every mismatch,
/// so one run names every value whose encoding changed.
#[derive(Default)]
pub struct Golden {
    failures: Vec<String>,
}

impl Golden {
    /// `now` must equal the hex literal `golden` (whitespace ignored).
    pub fn hex(&mut self, name: &str, now: &[u8], golden: &str) {
        if now != unhex(golden).as_slice() {
            self.failures.push(format!(
                "{name}: encoding differs from its golden bytes\n  golden: {}\n  now:    {}",
                golden.split_whitespace().collect::<String>(),
                hex::encode(now)
            ));
        }
    }

    /// `now` must equal the text `golden` byte for byte (JSON documents,
    /// line-per-value tables); a mismatch names the first line that differs.
    pub fn text(&mut self, name: &str, now: &[u8], golden: &str) {
        if now == golden.as_bytes() {
            return;
        }
        let now = String::from_utf8_lossy(now);
        let mut lines = golden.lines().zip(now.lines()).enumerate();
        let detail = match lines.find(|(_, (g, n))| g != n) {
            Some((i, (g, n))) => format!("line {}\n  golden: {g}\n  now:    {n}", i + 1),
            None => format!(
                "{} lines in the golden, {} now",
                golden.lines().count(),
                now.lines().count()
            ),
        };
        self.failures.push(format!(
            "{name}: encoding differs from its golden text at {detail}"
        ));
    }

    /// Records a failed check of a decoded value.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(format!("{name}: {}", detail()));
        }
    }

    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} golden mismatches:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// The bytes of a hex literal; whitespace is ignored so long literals can
/// wrap.
pub fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.split_whitespace().collect::<String>()).expect("golden hex literal")
}

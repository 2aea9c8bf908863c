//! The engine in process, for tests that need to control its clock or read
//! its state directly rather than through the binary.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use keymeter::config::Config;

/// A clock that stands still until the test moves it.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl keymeter::engine::Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Defaults with the data in `root/data`, the test admin key and a fixed
/// master key, so that nothing is generated outside `root`.
pub fn config(root: &Path) -> Config {
    use base64::Engine as _;
    Config {
        data_dir: root.join("data"),
        bootstrap_admin_key: Some(super::ADMIN_KEY.into()),
        master_key: Some(keymeter::crypto::SecretString::new(
            base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
        )),
        ..Config::default()
    }
}

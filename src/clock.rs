//! Where "now" comes from. Only the shell reads the system clock; the
//! writer's decisions receive `now_ms` as an argument, and tests pass a
//! clock of their own.

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

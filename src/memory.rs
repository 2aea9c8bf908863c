//! Process-wide memory settings, applied once at start.

/// Turns transparent huge pages off for this process (Linux only), unless the
/// operator decided otherwise through mimalloc's `MIMALLOC_ALLOW_THP`.
///
/// Why: mimalloc asks for huge pages on its arenas, and the engine's threads
/// hand memory to each other in batches (decoded events to the writer,
/// records to the syncer and projector), so fresh 2 MiB pages are faulted in
/// and zeroed whole again and again. On the reference machine that zeroing
/// was a fifth of all CPU time while ingesting from Kafka; with 4 KiB pages
/// the same run uses 5–10 % less CPU per event and ~50 MiB less memory
/// (ARCHITECTURE.md, "Memory"). Returns whether the setting was applied.
pub fn disable_transparent_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only
        // sets a flag on this process's memory map.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

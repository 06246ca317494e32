//! Memory that stays flat with many cameras.
//!
//! Every camera has several GStreamer threads that allocate frames and packets and hand them
//! to other threads to free, and a reconnecting camera replaces its threads. glibc gives
//! threads arenas of their own (up to eight per core) and keeps what is freed in each: with
//! 8 cameras reconnecting every 80 s, resident memory grew 65 % in 10 minutes; with two
//! arenas it stays flat (benches/README.md).

/// Limits glibc to two malloc arenas. Call it first thing in `main`, before any thread
/// starts; the environment variable `MALLOC_ARENA_MAX` still wins when set. Does nothing on
/// other C libraries.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of the allocator; called before other threads
        // exist, it races with nothing.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

//! A monotonic clock that is cheap enough for the hit path.

/// Nanoseconds on the kernel's coarse monotonic clock.
///
/// Every fetch stamps its layer with it, so this is on the hit path: reading
/// the coarse clock is a plain load from the vDSO page, where `Instant::now`
/// reads the TSC and scales it (docs/performance.md has both costs). Its
/// resolution is the kernel tick (1–4 ms).
pub(crate) fn coarse_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` that outlives the call, and
    // CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32, so the call
    // only writes `ts` and cannot fail.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE) failed");
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

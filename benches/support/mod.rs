//! Shared by the journal and region benchmarks: the allocator settings they run under.

/// mimalloc v3 backs its arenas with transparent huge pages where the kernel allows them
/// (`madvise` mode counts): a fault then zeroes 2 MiB, and pages it purges are faulted in
/// again. Measured here with `cargo bench --bench journal` (persist): with THP, ~8,000 page
/// faults cost the journal writer ~40% of its CPU, 150k events/s and p99.9 acks of 120–130
/// ms; without, 212k–229k events/s and p99.9 of 18–23 ms, the raw-redb baseline gaining as
/// much. So both the measured code and its baselines run with `MIMALLOC_ALLOW_THP=0`: unless
/// the variable is already set (then the caller's value is used), the benchmark runs itself
/// again as a child with it set, and exits with the child's status. Returns when this
/// process is the one to measure.
pub fn with_allocator_settings() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        eprintln!(
            "allocator: mimalloc, MIMALLOC_ALLOW_THP={}",
            std::env::var("MIMALLOC_ALLOW_THP").unwrap_or_default()
        );
        return;
    }
    let exe = std::env::current_exe().expect("own executable");
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MIMALLOC_ALLOW_THP", "0")
        .status()
        .expect("benchmark child process");
    std::process::exit(status.code().unwrap_or(1));
}

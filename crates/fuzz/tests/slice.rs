//! The CI slice of the fuzz harness: a fixed number of op calls and checkpoint inputs under a
//! seed that changes every day (printed, so a finding is replayed with
//! `cargo run --release -p hemi-fuzz --features cuda -- --seed S --replay I`). Any panic is a
//! finding and fails; an abort or an ASan report ends the test binary, which fails too.
//! `HEMI_FUZZ_OP_CALLS` / `HEMI_FUZZ_CHECKPOINTS` / `HEMI_FUZZ_SEED` / `HEMI_FUZZ_SECONDS`
//! (per phase) override the defaults; the long local runs use this binary too, because the
//! test profile keeps overflow checks and debug assertions on.

use hemi_fuzz::{devices, run, Config};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_slice_of_random_op_programs_and_checkpoints_finds_nothing() {
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let cfg = Config {
        seed: env_or("HEMI_FUZZ_SEED", day),
        op_calls: env_or("HEMI_FUZZ_OP_CALLS", 40_000),
        checkpoint_inputs: env_or("HEMI_FUZZ_CHECKPOINTS", 20_000),
        max_seconds: env_or("HEMI_FUZZ_SECONDS", 300) as f64,
        devices: devices(),
        program_len: 12,
        hang_seconds: 120,
        trace: false,
        first_program: 0,
    };
    let r = run(&cfg);
    println!("fuzz slice, {}", r.summary(&cfg));
    for f in &r.findings {
        println!(
            "FINDING ({} input {}): {}\n{}",
            f.kind, f.index, f.message, f.input
        );
    }
    assert!(
        r.findings.is_empty(),
        "{} findings (above)",
        r.findings.len()
    );
    // The slice must reach real work, not only argument checks: every op family succeeded
    // at least once (the counts are per op name).
    let never: Vec<_> = r
        .per_op
        .iter()
        .filter(|(_, &(ok, _))| ok == 0)
        .map(|(name, _)| *name)
        .collect();
    assert!(never.is_empty(), "ops that never succeeded: {never:?}");
    assert!(r.checkpoints_loaded > 0 && r.checkpoints_loaded < r.checkpoint_inputs);
}

//! The fuzz loop: seeded inputs, each op or load under `catch_unwind`, a watchdog for hangs,
//! and counts. Input `i` of seed `s` is a pure function of `(s, i)`, so a finding is replayed
//! with `hemi-fuzz --seed s --replay i`.

use crate::checkpoints::{draw_checkpoint, load_checkpoint};
use crate::draw::Draw;
use crate::ops::{draw_ops, run_op, Info, Op, POOL};
use hemi::Device;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of every input.
    pub seed: u64,
    /// Stop the op fuzzing after this many API calls.
    pub op_calls: u64,
    /// Checkpoint inputs to load.
    pub checkpoint_inputs: u64,
    /// Stop each phase after this many seconds even if its count is not reached.
    pub max_seconds: f64,
    /// Devices the op programs and loads use.
    pub devices: Vec<Device>,
    /// Ops per program (each program starts from an empty pool).
    pub program_len: usize,
    /// Abort with a report when one input runs longer than this (a hang).
    pub hang_seconds: u64,
    /// Print every op before it runs (to find the op of a hang or an abort).
    pub trace: bool,
    /// Index of the first op program (to resume near a finding).
    pub first_program: u64,
}

/// A panic (an abort or a sanitizer report ends the process instead).
#[derive(Debug, Clone)]
pub struct Finding {
    /// "op" or "checkpoint".
    pub kind: &'static str,
    /// The input's index under the run's seed.
    pub index: u64,
    /// The program up to the failing op, or the checkpoint bytes (hex).
    pub input: String,
    /// The panic message and location.
    pub message: String,
}

/// Counts and findings of a run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Public API calls made by the op programs.
    pub op_calls: u64,
    /// Op programs run.
    pub programs: u64,
    /// Checkpoint inputs loaded.
    pub checkpoint_inputs: u64,
    /// Of those, how many loaded successfully.
    pub checkpoints_loaded: u64,
    /// Per op name: (calls that returned `Ok`, calls that returned `Err`) — the fuzz must
    /// reach the ops' real work, not only their argument checks.
    pub per_op: std::collections::BTreeMap<&'static str, (u64, u64)>,
    /// Panics.
    pub findings: Vec<Finding>,
    /// Wall time of the whole run.
    pub seconds: f64,
}

impl Report {
    /// One line of counts: `seed S on [devices]: N op calls in P programs, ...`.
    pub fn summary(&self, cfg: &Config) -> String {
        format!(
            "seed {} on {:?}: {} op calls in {} programs, {} checkpoint inputs ({} loaded), {} \
             findings, {:.1} s",
            cfg.seed,
            cfg.devices,
            self.op_calls,
            self.programs,
            self.checkpoint_inputs,
            self.checkpoints_loaded,
            self.findings.len(),
            self.seconds
        )
    }
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the panic hook with one that records the message (any thread) instead of printing
/// (until [`loud_panics`]).
fn quiet_panics() {
    {
        std::panic::set_hook(Box::new(|info| {
            let msg = match info.payload().downcast_ref::<&str>() {
                Some(s) => s.to_string(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default(),
            };
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            // The hemi frames of the stack (the panic site is often inside std).
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            let frames: Vec<&str> = bt
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.starts_with("at ")
                        && !l.contains("/rustc/")
                        && !l.contains(".cargo/registry")
                        && !l.contains("driver.rs")
                })
                .take(8)
                .collect();
            let at = format!("{at} <- {}", frames.join(" <- "));
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg} at {at}"));
        }));
    }
}

/// Restores the default panic hook.
fn loud_panics() {
    let _ = std::panic::take_hook();
}

fn take_panic() -> String {
    LAST_PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_else(|| "panic without a message".into())
}

/// The bytes of input `index` under `seed` (splitmix64 stream).
pub fn input_bytes(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Aborts the process with a report when the current input outlives `limit`.
struct Watchdog {
    /// Milliseconds since `t0` at which the current input began, plus 1 (0: idle).
    started: Arc<AtomicU64>,
    what: Arc<Mutex<String>>,
    t0: Instant,
}

impl Watchdog {
    fn start(limit: Duration) -> Watchdog {
        let started = Arc::new(AtomicU64::new(0));
        let what = Arc::new(Mutex::new(String::new()));
        let (s, w) = (started.clone(), what.clone());
        let t0 = Instant::now();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let began = s.load(Ordering::Relaxed);
            let now = t0.elapsed().as_millis() as u64 + 1;
            if began != 0 && now.saturating_sub(began) > limit.as_millis() as u64 {
                let what = w.lock().unwrap_or_else(|e| e.into_inner()).clone();
                eprintln!("hemi-fuzz: HANG — one input ran past {limit:?}: {what}");
                std::process::abort();
            }
        });
        Watchdog { started, what, t0 }
    }
    fn begin(&self, what: impl FnOnce() -> String) {
        *self.what.lock().unwrap_or_else(|e| e.into_inner()) = what();
        self.started
            .store(self.t0.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }
}

/// Runs one op program; `Err` is a finding (the program so far and the panic).
pub fn run_program(cfg: &Config, index: u64, r: &mut Report) -> Result<(), Finding> {
    let bytes = input_bytes(cfg.seed, index, 64 * cfg.program_len);
    let mut d = Draw::new(&bytes);
    let mut pool = Vec::new();
    let mut guards = Vec::new();
    let mut program: Vec<Op> = Vec::new();
    for _ in 0..cfg.program_len {
        let infos: Vec<Info> = pool.iter().map(Info::of).collect();
        let Ok(group) = catch_unwind(AssertUnwindSafe(|| draw_ops(&mut d, &infos, &cfg.devices)))
        else {
            return Err(Finding {
                kind: "generator",
                index,
                input: format!("{program:#?}\nthen drawing for a pool of {infos:?}"),
                message: take_panic(),
            });
        };
        let last = group.len() - 1;
        for (k, op) in group.into_iter().enumerate() {
            if cfg.trace {
                eprintln!("{op:?}");
            }
            program.push(op.clone());
            match catch_unwind(AssertUnwindSafe(|| run_op(&op, &mut pool, &mut guards))) {
                Ok((n, ok)) => {
                    r.op_calls += n as u64;
                    let e = r.per_op.entry(op.name()).or_default();
                    if ok {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                        if k < last {
                            break; // a missing operand would shift the slots the op names
                        }
                    }
                }
                Err(_) => {
                    return Err(Finding {
                        kind: "op",
                        index,
                        input: format!("{program:#?}"),
                        message: take_panic(),
                    })
                }
            }
        }
        if pool.len() > POOL {
            pool.drain(..pool.len() - POOL);
        }
    }
    // Guards drop in reverse order of entry, as regions nest.
    while guards.pop().is_some() {}
    Ok(())
}

/// Runs checkpoint input `index`; `Err` is a finding.
pub fn run_checkpoint(cfg: &Config, index: u64, loaded: &mut u64) -> Result<(), Finding> {
    let bytes = input_bytes(cfg.seed ^ 0xC4EC_4B01, index, 512);
    let mut d = Draw::new(&bytes);
    let drawn = catch_unwind(AssertUnwindSafe(|| {
        let file = draw_checkpoint(&mut d);
        (file, d.device(&cfg.devices))
    }));
    let Ok((file, device)) = drawn else {
        return Err(Finding {
            kind: "generator",
            index,
            input: "checkpoint generation".into(),
            message: take_panic(),
        });
    };
    match catch_unwind(AssertUnwindSafe(|| load_checkpoint(&file, device))) {
        Ok(Ok(_)) => {
            *loaded += 1;
            Ok(())
        }
        Ok(Err(_)) => Ok(()),
        Err(_) => Err(Finding {
            kind: "checkpoint",
            index,
            input: file.iter().map(|b| format!("{b:02x}")).collect(),
            message: take_panic(),
        }),
    }
}

/// Runs the op phase then the checkpoint phase, each bounded by its count and by time.
pub fn run(cfg: &Config) -> Report {
    quiet_panics();
    let start = Instant::now();
    let dog = Watchdog::start(Duration::from_secs(cfg.hang_seconds));
    let mut r = Report {
        programs: cfg.first_program,
        ..Report::default()
    };
    let phase = Instant::now();
    while r.op_calls < cfg.op_calls && phase.elapsed().as_secs_f64() < cfg.max_seconds {
        let i = r.programs;
        dog.begin(|| format!("op program {i} of seed {}", cfg.seed));
        if let Err(f) = run_program(cfg, i, &mut r) {
            r.findings.push(f);
        }
        r.programs += 1;
    }
    let phase = Instant::now();
    while r.checkpoint_inputs < cfg.checkpoint_inputs
        && phase.elapsed().as_secs_f64() < cfg.max_seconds
    {
        let i = r.checkpoint_inputs;
        dog.begin(|| format!("checkpoint input {i} of seed {}", cfg.seed));
        if let Err(f) = run_checkpoint(cfg, i, &mut r.checkpoints_loaded) {
            r.findings.push(f);
        }
        r.checkpoint_inputs += 1;
    }
    dog.started.store(0, Ordering::Relaxed);
    loud_panics();
    r.seconds = start.elapsed().as_secs_f64();
    r
}

//! Crash-safe checkpoint saves: a child process saving a checkpoint is SIGKILLed at random
//! points of its save, many times over; after every kill the file must load and hold either
//! the previous checkpoint or the new one, bit for bit, and the next save must leave no
//! temporary behind. Unix only (SIGKILL, /proc for the stale-temporary cleanup).
#![cfg(unix)]

use hemi::{checkpoint, DType, Device, Result, Tensor};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the child: the path to save to and the value to fill the tensors with.
const CHILD_ENV: &str = "HEMI_CRASH_SAVE_CHILD";
/// Enough data that a save takes milliseconds (write + fsync), so kills land inside it.
const ELEMS: usize = 1 << 21;

fn tensors(value: f32) -> Result<Vec<(String, Tensor)>> {
    Ok(vec![
        (
            "a".to_string(),
            Tensor::full([ELEMS], value as f64, DType::F32, Device::Cpu)?,
        ),
        (
            "b".to_string(),
            Tensor::full([ELEMS / 2], value as f64, DType::F16, Device::Cpu)?,
        ),
    ])
}

/// The value every element of the checkpoint at `path` holds, or an error if it does not load
/// or is not uniform (a torn write).
fn checkpoint_value(path: &Path) -> std::result::Result<f32, String> {
    let t = checkpoint::load_tensors(path, Device::Cpu).map_err(|e| e.to_string())?;
    let a = t
        .get("a")
        .ok_or("no tensor a")?
        .to_vec::<f32>()
        .map_err(|e| e.to_string())?;
    let b = t
        .get("b")
        .ok_or("no tensor b")?
        .to_f64_vec()
        .map_err(|e| e.to_string())?;
    let v = a[0];
    let uniform = a.iter().all(|&x| x == v) && b.iter().all(|&x| x as f32 == v);
    if a.len() != ELEMS || b.len() != ELEMS / 2 || !uniform {
        return Err("the tensors are torn".into());
    }
    Ok(v)
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("scratch dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".tmp-"))
        })
        .collect()
}

/// Starts a child that announces itself, saves `value` to `path` and exits.
fn spawn_saver(path: &Path, value: u32) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "saver_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{value}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the saving child")
}

/// Waits for the child's line saying its save starts.
fn wait_for_save_start(child: &mut std::process::Child) {
    let out = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        if line.expect("child stdout").trim_end().ends_with("saving") {
            // Keep draining in the background so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return;
        }
    }
    panic!("the child exited before saving");
}

/// The child's body: only active when the parent test starts this binary with `CHILD_ENV`.
#[test]
fn saver_child() -> Result<()> {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return Ok(()); // run as a normal test: nothing to do (this is the child's entry point)
    };
    let (path, value) = spec.rsplit_once('|').expect("path|value");
    let t = tensors(value.parse::<u32>().expect("value") as f32)?;
    println!("saving");
    checkpoint::save_tensors(&t, path)?;
    println!("saved");
    Ok(())
}

#[test]
fn a_killed_save_leaves_the_old_or_the_new_checkpoint_and_no_temporaries() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("hemi-crash-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("model.safetensors");
    checkpoint::save_tensors(&tensors(1.0)?, &path)?;
    let mut committed = 1.0f32;

    // How long a save takes in a child, from its announcement to its exit.
    let mut child = spawn_saver(&path, 2);
    wait_for_save_start(&mut child);
    let t0 = Instant::now();
    assert!(child.wait().expect("child").success());
    let save_time = t0.elapsed();
    committed = 2.0f32.max(committed);
    assert_eq!(checkpoint_value(&path), Ok(committed));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut old, mut new, rounds) = (0, 0, 24);
    for round in 0..rounds {
        let value = 3 + round;
        let mut child = spawn_saver(&path, value);
        wait_for_save_start(&mut child);
        // Anywhere from the start of the save to a little past its usual end.
        let micros = save_time.as_micros() as u64 * 5 / 4 + 1;
        std::thread::sleep(Duration::from_micros(next() % micros));
        child.kill().ok(); // SIGKILL; fails only if the child already exited
        child.wait().expect("reap the child");
        match checkpoint_value(&path) {
            Ok(v) if v == committed => old += 1,
            Ok(v) if v == value as f32 => {
                new += 1;
                committed = v;
            }
            other => panic!(
                "seed {seed}, round {round}: after the kill the checkpoint reads {other:?}; \
                 expected the old value {committed} or the new {value}"
            ),
        }
    }
    println!(
        "{rounds} killed saves (seed {seed}, save ~{save_time:?}): {old} left the old \
         checkpoint, {new} the new"
    );

    // The next save removes every killed save's temporary.
    checkpoint::save_tensors(&tensors(99.0)?, &path)?;
    assert_eq!(checkpoint_value(&path), Ok(99.0));
    let left = temporaries(&dir);
    assert!(left.is_empty(), "temporaries left behind: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

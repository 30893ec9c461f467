//! Checkpoint loading streams tensor by tensor: the host memory it adds on top of the model is
//! one tensor, not the file (it used to hold the file, the parsed copies and the uploads, about
//! three times the file). Its own binary: the memory counters are process-wide.

use hemi::nn::{Linear, Module, Sequential};
use hemi::{checkpoint, memory_stats, reset_peak_memory, Device, Result};

#[test]
fn loading_a_checkpoint_adds_at_most_one_tensor_of_host_memory() -> Result<()> {
    let model = || -> Result<Sequential> {
        let mut s = Sequential::new();
        for _ in 0..4 {
            s = s.push(Linear::new(256, 256, true, Device::Cpu)?);
        }
        Ok(s)
    };
    let (a, b) = (model()?, model()?);
    let dir = std::env::temp_dir().join(format!("hemi-ckpt-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("m.safetensors");
    checkpoint::save(&a, &path)?;
    let file_bytes = std::fs::metadata(&path).expect("saved").len() as usize;
    let largest = 256 * 256 * 4;
    assert!(file_bytes > 3 * largest, "the file holds several tensors");

    let before = memory_stats(Device::Cpu);
    reset_peak_memory(Device::Cpu);
    checkpoint::load(&b, &path)?;
    let after = memory_stats(Device::Cpu);
    let extra = after.peak - before.current;
    assert!(
        extra <= largest,
        "load added {extra} bytes at its peak; one tensor is {largest}, the file {file_bytes}"
    );
    assert_eq!(after.current, before.current, "nothing is left behind");
    for (x, y) in a.parameters().iter().zip(b.parameters()) {
        assert_eq!(x.to_vec::<f32>()?, y.to_vec::<f32>()?);
    }

    // Saving fetches one tensor at a time too (a CPU tensor's host copy is not counted as
    // tensor storage, so this bounds only what stays alive: nothing).
    checkpoint::save(&b, &path)?;
    assert_eq!(memory_stats(Device::Cpu).current, before.current);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

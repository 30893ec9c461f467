//! Checkpoints: safetensors round trip with torchvision names, mismatch reports, corruption.

use hemi::checkpoint::{self, load_tensors, save_tensors};
use hemi::nn::{resnet18, Linear, Module};
use hemi::{manual_seed, DType, Device, Error, Result, Tensor};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hemi-ckpt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec()
        .expect("values")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn resnet_round_trip_is_bit_exact_with_torchvision_names() -> Result<()> {
    manual_seed(1);
    let dir = scratch("roundtrip");
    let path = dir.join("resnet18.safetensors");
    let a = resnet18(10, Device::Cpu)?;
    // Give buffers non-default values so they are really checked.
    a.forward(&Tensor::randn([2, 3, 32, 32], DType::F32, Device::Cpu)?)?;
    checkpoint::save(&a, &path)?;
    let entries: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        ["resnet18.safetensors"],
        "no temporary file is left behind"
    );
    let file = load_tensors(&path, Device::Cpu)?;
    assert_eq!(file.len(), 62 + 60);
    assert_eq!(
        file["layer2.0.downsample.0.weight"].dims(),
        &[128, 64, 1, 1]
    );
    assert_eq!(file["bn1.num_batches_tracked"].dtype(), DType::I64);
    assert_eq!(file["bn1.num_batches_tracked"].to_scalar::<i64>()?, 1);
    let b = resnet18(10, Device::Cpu)?;
    checkpoint::load(&b, &path)?;
    for ((na, ta), (nb, tb)) in a.state_dict().iter().zip(b.state_dict().iter()) {
        assert_eq!(na, nb);
        assert_eq!(ta.dtype(), tb.dtype(), "{na}");
        assert_eq!(bits(ta), bits(tb), "{na} differs after load");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn mismatches_are_all_reported_and_nothing_is_loaded() -> Result<()> {
    let dir = scratch("mismatch");
    let path = dir.join("m.safetensors");
    checkpoint::save(&resnet18(10, Device::Cpu)?, &path)?;
    let other = resnet18(5, Device::Cpu)?;
    let before = bits(&other.named_parameters()[0].1);
    let err = checkpoint::load(&other, &path).expect_err("fc differs");
    let Error::Checkpoint { problems, .. } = &err else {
        panic!("wrong error {err}")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems
        .iter()
        .any(|p| p.contains("fc.weight") && p.contains("[10, 512]") && p.contains("[5, 512]")));
    assert!(problems.iter().any(|p| p.contains("fc.bias")));
    assert_eq!(
        bits(&other.named_parameters()[0].1),
        before,
        "a failed load changes nothing"
    );

    let lin = Linear::new(3, 2, true, Device::Cpu)?;
    let renamed = [
        ("weight".to_string(), lin.weight.to_dtype(DType::F16)?),
        ("extra".to_string(), lin.bias.clone().expect("bias")),
    ];
    save_tensors(&renamed, &path)?;
    let err = checkpoint::load(&lin, &path)
        .expect_err("mismatch")
        .to_string();
    for want in [
        "weight: dtype float16 in file, model has float32",
        "missing bias",
        "unexpected extra",
    ] {
        assert!(err.contains(want), "`{err}` lacks `{want}`");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn corrupt_truncated_and_missing_files_are_errors() -> Result<()> {
    let dir = scratch("corrupt");
    let good = dir.join("good.safetensors");
    let lin = Linear::new(4, 3, true, Device::Cpu)?;
    checkpoint::save(&lin, &good)?;
    let bytes = std::fs::read(&good).expect("read");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", bytes[..12].to_vec()),
        ("truncated data", bytes[..bytes.len() - 5].to_vec()),
        ("garbage", (0..200u8).collect()),
        ("huge header length", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ];
    for (what, data) in cases {
        let p = dir.join(format!("{}.safetensors", what.replace(' ', "_")));
        std::fs::write(&p, data).expect("write");
        let r = checkpoint::load(&lin, &p);
        assert!(matches!(r, Err(Error::Io { .. })), "{what}: {r:?}");
    }
    assert!(matches!(
        checkpoint::load(&lin, dir.join("absent.safetensors")),
        Err(Error::Io { .. })
    ));
    assert!(checkpoint::save(&lin, dir.join("no/such/dir/x.safetensors")).is_err());
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Exchange with the Python side: numpy + safetensors read what hemi wrote (names, dtypes,
/// values) and write a file hemi reads. Skips, saying why, when they are not installed.
#[test]
fn python_safetensors_reads_and_writes_compatible_files() -> Result<()> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        eprintln!("SKIPPED python_safetensors_reads_and_writes_compatible_files: python3 with numpy and safetensors not found (pip install numpy safetensors)");
        return Ok(());
    }
    let dir = scratch("python");
    let ours = dir.join("ours.safetensors");
    let theirs = dir.join("theirs.safetensors");
    let t = Tensor::from_vec(
        vec![1.5f32, -2.25, 3.0, 0.125, 7.0, -0.5],
        [2, 3],
        Device::Cpu,
    )?;
    let h = t.to_dtype(DType::F16)?;
    save_tensors(
        &[
            ("a.weight".into(), t.clone()),
            ("b.half".into(), h),
            ("n".into(), Tensor::full((), 7.0, DType::I64, Device::Cpu)?),
        ],
        &ours,
    )?;
    let script = format!(
        "from safetensors.numpy import load_file, save_file\nimport numpy as np\nd = load_file('{}')\n\
         assert d['a.weight'].dtype == np.float32 and d['a.weight'].shape == (2, 3)\n\
         assert d['b.half'].dtype == np.float16 and d['n'].dtype == np.int64 and d['n'].shape == ()\n\
         assert d['a.weight'].tolist() == [[1.5, -2.25, 3.0], [0.125, 7.0, -0.5]]\n\
         save_file({{'x': (d['a.weight'] * 2).astype(np.float64), 'y': np.arange(5, dtype=np.int64)}}, '{}')\n",
        ours.display(),
        theirs.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python side failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = load_tensors(&theirs, Device::Cpu)?;
    assert_eq!(
        back["x"].to_vec::<f64>()?,
        vec![3.0, -4.5, 6.0, 0.25, 14.0, -1.0]
    );
    assert_eq!(back["y"].to_vec::<i64>()?, vec![0, 1, 2, 3, 4]);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

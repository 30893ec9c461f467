//! The readers against files written here in the exact on-disk formats (IDX plain and gzipped,
//! CIFAR-10 / CIFAR-100 binary batches), and malformed files: errors naming the file and the
//! byte offset, never a panic.

use hemi_data::cifar::{self, Cifar};
use hemi_data::mnist;
use hemi_data::transforms::SampleRng;
use hemi_data::{Dataset, Pixels};
use hemi_engine::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir.
fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hemi-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Bytes from a xorshift stream (fresh, non-zero data).
fn bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write");
}

/// A Data error naming `path` at `offset`.
fn assert_data_err(e: Error, path: &Path, offset: u64) {
    match &e {
        Error::Data {
            path: p, offset: o, ..
        } => {
            assert_eq!(p, &path.display().to_string(), "{e}");
            assert_eq!(*o, offset, "{e}");
        }
        other => panic!("expected a Data error at {offset}, got {other}"),
    }
}

#[test]
fn mnist_idx_plain_and_gzipped_read_back() -> hemi_engine::Result<()> {
    let (n, h, w) = (7usize, 5usize, 3usize);
    let pixels = bytes(n * h * w, 11);
    let labels: Vec<u8> = bytes(n, 12).iter().map(|b| b % 10).collect();
    for (name, zipped) in [("plain", false), ("gz", true)] {
        let dir = tempdir(&format!("mnist-{name}"));
        // torchvision's layout for the gzipped copy: <root>/MNIST/raw/.
        let raw = if zipped {
            dir.join("MNIST").join("raw")
        } else {
            dir.clone()
        };
        std::fs::create_dir_all(&raw).expect("raw dir");
        let ext = if zipped { ".gz" } else { "" };
        let enc = |d: Vec<u8>| if zipped { gz(&d) } else { d };
        for split in ["train", "t10k"] {
            let imgs = idx(&[n as u32, h as u32, w as u32], &pixels);
            write(
                &raw.join(format!("{split}-images-idx3-ubyte{ext}")),
                &enc(imgs),
            );
            let lbls = idx(&[n as u32], &labels);
            write(
                &raw.join(format!("{split}-labels-idx1-ubyte{ext}")),
                &enc(lbls),
            );
        }
        for train in [true, false] {
            let ds = mnist::load(&dir, train)?;
            assert_eq!(ds.len(), n);
            for i in 0..n {
                let s = ds.get(i, &mut SampleRng::new(0))?;
                assert_eq!(
                    (s.image.channels(), s.image.height(), s.image.width()),
                    (1, h, w)
                );
                assert_eq!(
                    s.image.pixels(),
                    &Pixels::U8(pixels[i * h * w..][..h * w].to_vec())
                );
                assert_eq!(s.label, i64::from(labels[i]));
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(())
}

#[test]
fn malformed_idx_files_are_errors_with_file_and_offset() {
    let dir = tempdir("mnist-bad");
    let (i, l) = (dir.join("images"), dir.join("labels"));
    let good_labels = idx(&[4], &[1, 2, 3, 4]);
    write(&l, &good_labels);
    // Truncated pixels: 4 × 2 × 2 need 16 values after the 16-byte header; 10 are there.
    write(&i, &idx(&[4, 2, 2], &bytes(10, 3)));
    assert_data_err(mnist::from_files(&i, &l).expect_err("truncated"), &i, 26);
    // The same truncation inside a gzip stream: the offset counts inflated bytes.
    write(&i, &gz(&idx(&[4, 2, 2], &bytes(10, 3))));
    assert_data_err(mnist::from_files(&i, &l).expect_err("truncated gz"), &i, 26);
    // A gzip stream cut short.
    let z = gz(&idx(&[4, 2, 2], &bytes(16, 3)));
    write(&i, &z[..z.len() / 2]);
    assert!(matches!(mnist::from_files(&i, &l), Err(Error::Data { .. })));
    // Header cut inside the dimensions.
    write(&i, &idx(&[4, 2, 2], &[])[..9]);
    assert_data_err(mnist::from_files(&i, &l).expect_err("short header"), &i, 9);
    // Not IDX, wrong element type.
    write(&i, b"PK\x03\x04 a zip file");
    assert_data_err(mnist::from_files(&i, &l).expect_err("magic"), &i, 0);
    let mut f32_idx = idx(&[4, 2, 2], &bytes(16, 3));
    f32_idx[2] = 0x0d;
    write(&i, &f32_idx);
    assert_data_err(mnist::from_files(&i, &l).expect_err("type"), &i, 2);
    // Label 12 at index 2: byte 8 + 2.
    write(&i, &idx(&[4, 2, 2], &bytes(16, 3)));
    write(&l, &idx(&[4], &[1, 2, 12, 4]));
    assert_data_err(mnist::from_files(&i, &l).expect_err("label"), &l, 10);
    // Counts that disagree.
    write(&l, &idx(&[3], &[1, 2, 3]));
    assert!(matches!(mnist::from_files(&i, &l), Err(Error::Data { .. })));
    // Missing files name what was looked for.
    let e = mnist::load(dir.join("nowhere"), true).expect_err("missing");
    assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// One CIFAR record: label byte(s) then 3072 pixel bytes.
fn record(kind: Cifar, label: u8, pixels: &[u8]) -> Vec<u8> {
    let mut r = match kind {
        Cifar::Ten => vec![label],
        Cifar::Hundred => vec![label / 5, label],
    };
    r.extend_from_slice(pixels);
    r
}

#[test]
fn cifar_binary_batches_read_back() -> hemi_engine::Result<()> {
    for kind in [Cifar::Ten, Cifar::Hundred] {
        let dir = tempdir(&format!("cifar-{kind:?}"));
        let sub = dir.join(match kind {
            Cifar::Ten => "cifar-10-batches-bin",
            Cifar::Hundred => "cifar-100-binary",
        });
        std::fs::create_dir_all(&sub).expect("dir");
        let files: Vec<&str> = match kind {
            Cifar::Ten => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            Cifar::Hundred => vec!["train.bin"],
        };
        let classes = if kind == Cifar::Ten { 10 } else { 100 };
        let mut want = Vec::new();
        for (fi, f) in files.iter().enumerate() {
            let mut data = Vec::new();
            for r in 0..3 {
                let px = bytes(3072, (fi * 10 + r + 1) as u64);
                let label = ((fi * 3 + r) * 7 % classes) as u8;
                data.extend(record(kind, label, &px));
                want.push((label, px));
            }
            write(&sub.join(f), &data);
        }
        let test_file = if kind == Cifar::Ten {
            "test_batch.bin"
        } else {
            "test.bin"
        };
        write(&sub.join(test_file), &record(kind, 3, &bytes(3072, 99)));
        let train = cifar::load(&dir, kind, true)?;
        assert_eq!(train.len(), want.len());
        for (i, (label, px)) in want.iter().enumerate() {
            let s = train.get(i, &mut SampleRng::new(0))?;
            assert_eq!(
                (s.image.channels(), s.image.height(), s.image.width()),
                (3, 32, 32)
            );
            assert_eq!(
                s.image.pixels(),
                &Pixels::U8(px.clone()),
                "{kind:?} record {i}"
            );
            assert_eq!(s.label, i64::from(*label));
        }
        assert_eq!(cifar::load(&dir, kind, false)?.len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(())
}

#[test]
fn malformed_cifar_batches_are_errors_with_file_and_offset() {
    let dir = tempdir("cifar-bad");
    let p = dir.join("test_batch.bin");
    let mut data = record(Cifar::Ten, 1, &bytes(3072, 1));
    data.extend(&record(Cifar::Ten, 2, &bytes(3072, 2))[..100]);
    write(&p, &data);
    assert_data_err(
        cifar::load(&dir, Cifar::Ten, false).expect_err("truncated"),
        &p,
        3073,
    );
    let mut data = record(Cifar::Ten, 1, &bytes(3072, 1));
    data.extend(record(Cifar::Ten, 10, &bytes(3072, 2)));
    write(&p, &data);
    assert_data_err(
        cifar::load(&dir, Cifar::Ten, false).expect_err("label"),
        &p,
        3073,
    );
    let q = dir.join("test.bin");
    write(&q, &record(Cifar::Hundred, 100, &bytes(3072, 1)));
    assert_data_err(
        cifar::load(&dir, Cifar::Hundred, false).expect_err("fine label"),
        &q,
        1,
    );
    let e = cifar::load(&dir, Cifar::Ten, true).expect_err("missing");
    assert!(e.to_string().contains("data_batch_1.bin"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn image_folders_of_png_and_jpeg_read_back() -> hemi_engine::Result<()> {
    use hemi_data::ImageFolder;
    let dir = tempdir("folder");
    // Classes in reverse creation order: labels follow the sorted names.
    for class in ["zebra", "ant"] {
        std::fs::create_dir_all(dir.join(class)).expect("class dir");
    }
    std::fs::write(dir.join("ant").join("notes.txt"), "not an image").expect("txt");
    let (w, h) = (5u32, 3u32);
    let rgb = bytes((w * h * 3) as usize, 21);
    let png = image::RgbImage::from_raw(w, h, rgb.clone()).expect("rgb");
    png.save(dir.join("ant").join("b.png")).expect("png");
    // A grey PNG becomes three equal channels.
    let grey = image::GrayImage::from_raw(w, h, bytes((w * h) as usize, 22)).expect("grey");
    grey.save(dir.join("ant").join("a.PNG")).expect("grey png");
    // A flat-colour JPEG (lossy, but a flat colour survives within a few levels).
    let flat = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 40, 90]));
    flat.save(dir.join("zebra").join("c.jpg")).expect("jpeg");
    let ds = ImageFolder::new(&dir)?;
    assert_eq!(ds.classes(), ["ant", "zebra"]);
    assert_eq!(ds.len(), 3);
    let mut rng = SampleRng::new(0);
    let a = ds.get(0, &mut rng)?; // ant/a.PNG (sorted: "a.PNG" < "b.png")
    let Pixels::U8(av) = a.image.pixels() else {
        panic!("bytes")
    };
    assert_eq!(
        (
            a.image.channels(),
            a.image.height(),
            a.image.width(),
            a.label
        ),
        (3, 3, 5, 0)
    );
    let g = grey.into_raw();
    assert_eq!(&av[..15], &g[..]);
    assert_eq!(&av[15..30], &g[..]);
    let b = ds.get(1, &mut rng)?;
    let Pixels::U8(bv) = b.image.pixels() else {
        panic!("bytes")
    };
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            assert_eq!(bv[c * 15 + i], px[c], "pixel {i} channel {c}");
        }
    }
    let c = ds.get(2, &mut rng)?;
    assert_eq!((c.image.height(), c.image.width(), c.label), (8, 8, 1));
    let Pixels::U8(cv) = c.image.pixels() else {
        panic!("bytes")
    };
    for (ch, want) in [200i32, 40, 90].iter().enumerate() {
        assert!(
            cv[ch * 64..][..64]
                .iter()
                .all(|&v| (i32::from(v) - want).abs() <= 3),
            "channel {ch}"
        );
    }
    // A PNG cut short and a text file named .png are errors naming the file.
    let good = std::fs::read(dir.join("ant").join("b.png")).expect("png bytes");
    let cut = dir.join("ant").join("b.png");
    write(&cut, &good[..good.len() / 2]);
    match ds.get(1, &mut rng) {
        Err(Error::Data { path, .. }) => assert_eq!(path, cut.display().to_string()),
        other => panic!("truncated png: {other:?}"),
    }
    let fake = dir.join("zebra").join("c.jpg");
    write(&fake, b"definitely not a jpeg");
    assert!(matches!(ds.get(2, &mut rng), Err(Error::Data { .. })));
    // No images at all is an error naming the root.
    let empty = tempdir("folder-empty");
    std::fs::create_dir_all(empty.join("cls")).expect("dir");
    assert!(ImageFolder::new(&empty).is_err());
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&empty).ok();
    Ok(())
}

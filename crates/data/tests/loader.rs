//! Transforms against their definitions, and the loader's batching, order and determinism.

use hemi_data::transforms::{
    Compose, Grayscale, Normalize, RandomCrop, RandomHorizontalFlip, Resize, SampleRng, ToTensor,
    Transform,
};
use hemi_data::{
    DataLoader, DataLoaderConfig, Dataset, Image, InMemory, Pixels, Sample, Transformed,
};
use hemi_engine::{Device, Error, Result};

fn f32s(img: &Image) -> Vec<f32> {
    match img.pixels() {
        Pixels::F32(v) => v.clone(),
        Pixels::U8(_) => panic!("expected floats"),
    }
}

#[test]
fn to_tensor_and_normalize_as_torchvision() -> Result<()> {
    let img = Image::from_u8(2, 1, 2, vec![0, 51, 255, 102])?;
    let t = ToTensor.apply(img, &mut SampleRng::new(0))?;
    assert_eq!(f32s(&t), vec![0.0, 51.0 / 255.0, 1.0, 102.0 / 255.0]);
    let n = Normalize::new(vec![0.5, 0.25], vec![0.5, 2.0])?.apply(t, &mut SampleRng::new(0))?;
    let want = [
        (0.0 - 0.5) / 0.5,
        (51.0 / 255.0 - 0.5) / 0.5,
        (1.0 - 0.25) / 2.0,
        (102.0 / 255.0 - 0.25) / 2.0,
    ];
    assert_eq!(f32s(&n), want.to_vec());
    // Bytes, wrong channel counts and zero deviations are errors.
    let bytes = Image::from_u8(1, 1, 1, vec![3])?;
    assert!(Normalize::new(vec![0.0], vec![1.0])?
        .apply(bytes, &mut SampleRng::new(0))
        .is_err());
    assert!(Normalize::new(vec![0.0], vec![0.0]).is_err());
    assert!(Normalize::new(vec![0.0, 1.0], vec![1.0]).is_err());
    Ok(())
}

#[test]
fn crop_and_flip_move_pixels_as_defined() -> Result<()> {
    let (h, w) = (5, 6);
    let data: Vec<u8> = (1..=(2 * h * w) as u8).collect();
    let img = Image::from_u8(2, h, w, data.clone())?;
    let crop = RandomCrop {
        size: (4, 4),
        padding: 2,
    };
    for seed in 0..40 {
        let out = crop.apply(img.clone(), &mut SampleRng::new(seed))?;
        // The same draws give the corner: top in 0..=(h+4-4), left in 0..=(w+4-4).
        let mut rng = SampleRng::new(seed);
        let (top, left) = (rng.up_to(h), rng.up_to(w));
        let Pixels::U8(got) = out.pixels() else {
            panic!("bytes stay bytes")
        };
        for c in 0..2 {
            for y in 0..4 {
                for x in 0..4 {
                    let (sy, sx) = (top + y, left + x);
                    let want = if (2..h + 2).contains(&sy) && (2..w + 2).contains(&sx) {
                        data[c * h * w + (sy - 2) * w + (sx - 2)]
                    } else {
                        0
                    };
                    assert_eq!(got[c * 16 + y * 4 + x], want, "seed {seed} ({c},{y},{x})");
                }
            }
        }
    }
    assert!(RandomCrop {
        size: (10, 4),
        padding: 2
    }
    .apply(img.clone(), &mut SampleRng::new(0))
    .is_err());
    let flipped = RandomHorizontalFlip { p: 1.0 }.apply(img.clone(), &mut SampleRng::new(0))?;
    let Pixels::U8(f) = flipped.pixels() else {
        panic!("bytes")
    };
    for (i, &v) in f.iter().enumerate() {
        let (row, x) = (i / w, i % w);
        assert_eq!(v, data[row * w + (w - 1 - x)]);
    }
    let kept = RandomHorizontalFlip { p: 0.0 }.apply(img.clone(), &mut SampleRng::new(0))?;
    assert_eq!(kept, img);
    // p = 0.5 flips some seeds and not others.
    let flips = (0..64)
        .filter(|&s| {
            RandomHorizontalFlip::default()
                .apply(img.clone(), &mut SampleRng::new(s))
                .map(|o| o != img)
                .unwrap_or(false)
        })
        .count();
    assert!((16..48).contains(&flips), "{flips} of 64 flipped");
    Ok(())
}

#[test]
fn resize_is_bilinear_with_half_pixel_centers() -> Result<()> {
    // torch.nn.functional.interpolate([[0, 1], [2, 3]], size=4, mode="bilinear",
    // align_corners=False)
    let img = Image::from_f32(1, 2, 2, vec![0.0, 1.0, 2.0, 3.0])?;
    let out = Resize { size: (4, 4) }.apply(img, &mut SampleRng::new(0))?;
    #[rustfmt::skip]
    let want = vec![
        0.0, 0.25, 0.75, 1.0,
        0.5, 0.75, 1.25, 1.5,
        1.5, 1.75, 2.25, 2.5,
        2.0, 2.25, 2.75, 3.0,
    ];
    assert_eq!(f32s(&out), want);
    // Downscaling by 2 averages each 2x2 block's centre pair: [[0,1,2,3]] rows -> 0.5, 2.5.
    let row = Image::from_u8(1, 1, 4, vec![0, 10, 20, 30])?;
    let out = Resize { size: (1, 2) }.apply(row, &mut SampleRng::new(0))?;
    assert_eq!(out.pixels(), &Pixels::U8(vec![5, 25]));
    assert!(Resize { size: (0, 2) }
        .apply(out, &mut SampleRng::new(0))
        .is_err());
    Ok(())
}

#[test]
fn grayscale_repeats_one_channel_and_weighs_rgb_as_torchvision() -> Result<()> {
    let one = Image::from_u8(1, 1, 2, vec![7, 200])?;
    let three = Grayscale { channels: 3 }.apply(one.clone(), &mut SampleRng::new(0))?;
    assert_eq!(three.pixels(), &Pixels::U8(vec![7, 200, 7, 200, 7, 200]));
    // R, G, B planes of two pixels: (100, 50, 10) and (0, 255, 255).
    let rgb = Image::from_u8(3, 1, 2, vec![100, 0, 50, 255, 10, 255])?;
    let g = Grayscale { channels: 1 }.apply(rgb, &mut SampleRng::new(0))?;
    // 0.299·100 + 0.587·50 + 0.114·10 = 60.39 → 60; 0.587·255 + 0.114·255 = 178.755 → 179
    assert_eq!(g.pixels(), &Pixels::U8(vec![60, 179]));
    assert!(Grayscale { channels: 2 }
        .apply(one, &mut SampleRng::new(0))
        .is_err());
    Ok(())
}

/// `n` distinct 1 × 3 × 3 byte images, label = index.
fn numbered(n: usize) -> Result<InMemory> {
    let images = (0..n)
        .map(|i| Image::from_u8(1, 3, 3, (0..9).map(|p| (i * 9 + p) as u8).collect()))
        .collect::<Result<Vec<_>>>()?;
    InMemory::new(images, (0..n as i64).collect())
}

/// One batch read back: (indices, image values, labels).
type Read = (Vec<usize>, Vec<f32>, Vec<i64>);

/// Every batch of an epoch.
fn collect<D: Dataset + 'static>(l: &DataLoader<D>, epoch: u64, first: usize) -> Result<Vec<Read>> {
    l.epoch_from(epoch, first, Device::Cpu)?
        .map(|b| {
            let b = b?;
            Ok((
                b.indices,
                b.images.to_vec::<f32>()?,
                b.labels.to_vec::<i64>()?,
            ))
        })
        .collect()
}

#[test]
fn order_and_augmentation_depend_on_the_seed_not_on_the_workers() -> Result<()> {
    let augment = || {
        Compose::new(vec![
            Box::new(RandomCrop {
                size: (3, 3),
                padding: 1,
            }),
            Box::new(RandomHorizontalFlip::default()),
            Box::new(ToTensor),
        ])
    };
    let config = |workers| DataLoaderConfig {
        batch_size: 4,
        shuffle: true,
        seed: 7,
        num_workers: workers,
        prefetch: 2,
        drop_last: false,
    };
    let base = DataLoader::new(Transformed::new(numbered(23)?, augment()), config(0))?;
    assert_eq!(base.len(), 6);
    let e0 = collect(&base, 0, 0)?;
    // A permutation of every example, batches of 4 then 3, labels following their images.
    let mut seen: Vec<usize> = e0.iter().flat_map(|b| b.0.clone()).collect();
    assert_ne!(seen, (0..23).collect::<Vec<_>>(), "shuffled");
    seen.sort_unstable();
    assert_eq!(seen, (0..23).collect::<Vec<_>>());
    assert_eq!(
        e0.iter().map(|b| b.0.len()).collect::<Vec<_>>(),
        vec![4, 4, 4, 4, 4, 3]
    );
    for b in &e0 {
        assert_eq!(b.2, b.0.iter().map(|&i| i as i64).collect::<Vec<_>>());
    }
    for workers in [1, 3] {
        let l = DataLoader::new(Transformed::new(numbered(23)?, augment()), config(workers))?;
        assert_eq!(collect(&l, 0, 0)?, e0, "{workers} workers");
        // Resuming at batch 2 gives the same tail.
        assert_eq!(
            collect(&l, 0, 2)?,
            e0[2..].to_vec(),
            "{workers} workers from batch 2"
        );
    }
    // Another epoch, another permutation and other crops.
    let e1 = collect(&base, 1, 0)?;
    assert_ne!(
        e1.iter().map(|b| b.0.clone()).collect::<Vec<_>>(),
        e0.iter().map(|b| b.0.clone()).collect::<Vec<_>>()
    );
    // drop_last and no shuffle.
    let plain = DataLoader::new(
        numbered(10)?,
        DataLoaderConfig {
            batch_size: 4,
            drop_last: true,
            ..Default::default()
        },
    )?;
    let e = collect(&plain, 0, 0)?;
    assert_eq!(
        e.iter().map(|b| b.0.clone()).collect::<Vec<_>>(),
        vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
    );
    assert_eq!(
        e[0].1[..9],
        (0..9).map(|v| v as f32).collect::<Vec<_>>()[..]
    );
    Ok(())
}

/// Panics on example 6.
struct Panicky;

impl Dataset for Panicky {
    fn len(&self) -> usize {
        8
    }

    fn get(&self, index: usize, _: &mut SampleRng) -> Result<Sample> {
        assert!(index != 6, "example 6 is cursed");
        Ok(Sample {
            image: Image::from_u8(1, 1, 1, vec![1])?,
            label: 0,
        })
    }
}

#[test]
fn a_panicking_dataset_fails_its_batch_with_workers() -> Result<()> {
    let l = DataLoader::new(
        Panicky,
        DataLoaderConfig {
            batch_size: 4,
            num_workers: 2,
            ..Default::default()
        },
    )?;
    let results: Vec<_> = l.epoch(0, Device::Cpu)?.collect();
    assert!(results[0].is_ok());
    let e = results[1].as_ref().expect_err("panicked batch");
    assert!(
        e.to_string().contains("panicked while loading batch 1"),
        "{e}"
    );
    Ok(())
}

/// Image 3 has another size; image 5 fails to load.
struct Uneven;

impl Dataset for Uneven {
    fn len(&self) -> usize {
        8
    }

    fn get(&self, index: usize, _: &mut SampleRng) -> Result<Sample> {
        if index == 5 {
            return Err(Error::invalid("Uneven", "example 5 is unreadable"));
        }
        let side = if index == 3 { 2 } else { 3 };
        Ok(Sample {
            image: Image::from_u8(1, side, side, vec![1; side * side])?,
            label: 0,
        })
    }
}

#[test]
fn bad_examples_and_bad_configurations_are_errors() -> Result<()> {
    for workers in [0, 2] {
        let l = DataLoader::new(
            Uneven,
            DataLoaderConfig {
                batch_size: 4,
                num_workers: workers,
                ..Default::default()
            },
        )?;
        let results: Vec<_> = l.epoch(0, Device::Cpu)?.collect();
        assert_eq!(results.len(), 2);
        let e = results[0].as_ref().expect_err("mixed sizes");
        assert!(e.to_string().contains("example 3"), "{e}");
        let e = results[1].as_ref().expect_err("unreadable");
        assert!(e.to_string().contains("example 5"), "{e}");
    }
    assert!(DataLoader::new(
        Uneven,
        DataLoaderConfig {
            batch_size: 0,
            ..Default::default()
        }
    )
    .is_err());
    assert!(DataLoader::new(
        Uneven,
        DataLoaderConfig {
            prefetch: 0,
            ..Default::default()
        }
    )
    .is_err());
    // Dropping an epoch with batches in flight stops its workers.
    let l = DataLoader::new(
        numbered(40)?,
        DataLoaderConfig {
            batch_size: 2,
            num_workers: 3,
            ..Default::default()
        },
    )?;
    let mut e = l.epoch(0, Device::Cpu)?;
    assert!(e.next().is_some());
    drop(e);
    Ok(())
}

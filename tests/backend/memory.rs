//! The memory family's in-place copy: `assign` writes into the storage (views and detached
//! handles see it) and bumps the version counter that makes a stale backward fail.

use hemi::*;

pub fn rand(gen: &mut Generator, dims: &[usize], dev: Device) -> Result<Tensor> {
    Tensor::uniform_with(gen, dims.to_vec(), -1.0, 1.0, DType::F32, Device::Cpu)?.to_device(dev)
}

backend_test!(
    assign_is_visible_through_views_and_detached_handles,
    |dev| {
        let mut gen = Generator::new(1);

        let w = rand(&mut gen, &[3, 5], dev)?;
        let (view, handle) = (w.narrow(0, 1, 2)?, w.detach());
        let new = rand(&mut gen, &[3, 5], dev)?;
        let v0 = w.version();
        w.assign(&new)?;
        assert_eq!(w.version(), v0 + 1, "{dev}: assign bumps the version");
        assert_eq!(
            handle.version(),
            w.version(),
            "{dev}: one counter per storage"
        );
        assert_eq!(handle.to_vec::<f32>()?, new.to_vec::<f32>()?, "{dev}");
        assert_eq!(
            view.to_vec::<f32>()?,
            new.narrow(0, 1, 2)?.to_vec::<f32>()?,
            "{dev}: the view sees the write"
        );
        // A contiguous view as the destination writes into the middle of the storage.
        let row = w.narrow(0, 2, 1)?;
        row.assign(&Tensor::full([1, 5], 7.0, DType::F16, dev)?)?;
        let all = w.to_vec::<f32>()?;
        assert_eq!(
            &all[10..],
            &[7.0; 5],
            "{dev}: rounded and written at the offset"
        );
        assert_eq!(
            &all[..10],
            &new.to_vec::<f32>()?[..10],
            "{dev}: the rest untouched"
        );
        // The source may be the destination's own storage (overlapping rows).
        let top = w.narrow(0, 0, 2)?;
        let expect = w.narrow(0, 1, 2)?.to_vec::<f32>()?;
        top.assign(&w.narrow(0, 1, 2)?)?;
        assert_eq!(top.to_vec::<f32>()?, expect, "{dev}: overlapping assign");
        // A contiguous view of another storage, at an offset (one direct copy on the CPU).
        let src = rand(&mut gen, &[4, 5], dev)?;
        let dst = rand(&mut gen, &[2, 5], dev)?;
        dst.assign(&src.narrow(0, 2, 2)?)?;
        assert_eq!(
            dst.to_vec::<f32>()?,
            src.narrow(0, 2, 2)?.to_vec::<f32>()?,
            "{dev}: offset source"
        );
        // Two threads copying between the same two storages in opposite directions finish
        // (the CPU takes both buffers' locks in one global order).
        let (a, b) = (rand(&mut gen, &[64], dev)?, rand(&mut gen, &[64], dev)?);
        std::thread::scope(|s| -> Result<()> {
            let other = s.spawn(|| (0..500).try_for_each(|_| a.assign(&b)));
            (0..500).try_for_each(|_| b.assign(&a))?;
            other.join().expect("no panic")
        })?;
        Ok(())
    }
);

backend_test!(
    backward_fails_when_a_saved_tensor_was_modified_in_place,
    |dev| {
        let mut gen = Generator::new(2);

        let w = rand(&mut gen, &[4, 3], dev)?.requires_grad_(true)?;
        let x = rand(&mut gen, &[2, 4], dev)?;
        let loss = x.matmul(&w)?.sum_all()?; // matmul saves x and w
        x.assign(&rand(&mut gen, &[2, 4], dev)?)?;
        let err = loss.backward().expect_err("x changed after it was saved");
        let Error::Autograd(msg) = &err else {
            panic!("{dev}: expected an autograd error, got {err:?}")
        };
        for want in [
            "matmul",
            "modified by an in-place operation",
            "version 1",
            "version 0",
        ] {
            assert!(msg.contains(want), "{dev}: `{want}` missing from: {msg}");
        }
        // An op that saves nothing of a tensor does not care (as in PyTorch: add saves no input).
        let a = rand(&mut gen, &[3], dev)?.requires_grad_(true)?;
        let b = rand(&mut gen, &[3], dev)?;
        let y = a.add(&b)?.sum_all()?;
        b.assign(&rand(&mut gen, &[3], dev)?)?;
        y.backward()?;
        assert_eq!(
            a.grad().expect("grad").to_vec::<f32>()?,
            vec![1.0; 3],
            "{dev}"
        );
        Ok(())
    }
);

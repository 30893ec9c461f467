//! `hemi::cpu::init_threads`: rayon's global pool with the calling thread as worker 0. One
//! test in its own binary (the global pool is built once per process): the pool is built,
//! refused a second time, and ops give the same bits called from the pool's own thread
//! (run in place, split with the other worker) and from a thread outside it (handed to the
//! other worker).

use hemi::*;

/// A convolution's output and both gradients, as bits.
fn conv_pass(seed: u64) -> Result<Vec<Vec<u32>>> {
    let mut g = Generator::new(seed);
    let x = Tensor::uniform_with(&mut g, [3, 16, 19, 17], -1.0, 1.0, DType::F32, Device::Cpu)?
        .requires_grad_(true)?;
    let w = Tensor::uniform_with(&mut g, [24, 16, 3, 3], -1.0, 1.0, DType::F32, Device::Cpu)?
        .requires_grad_(true)?;
    let y = x.conv2d(&w, None, Conv2dParams::new(1, 1))?;
    y.mul(&y)?.sum_all()?.backward()?;
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.to_vec::<f32>()?.iter().map(|v| v.to_bits()).collect())
    };
    Ok(vec![
        bits(&y)?,
        bits(&x.grad().expect("dx"))?,
        bits(&w.grad().expect("dw"))?,
    ])
}

#[test]
fn calling_thread_joins_the_pool_once() -> Result<()> {
    let e = cpu::init_threads(Some(0)).expect_err("zero threads");
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    cpu::init_threads(Some(2))?;
    assert_eq!(
        rayon::current_thread_index(),
        Some(0),
        "the caller is worker 0"
    );
    assert_eq!(rayon::current_num_threads(), 2);
    let here = conv_pass(5)?;
    let elsewhere = std::thread::spawn(|| conv_pass(5))
        .join()
        .expect("no panic")?;
    assert_eq!(
        here, elsewhere,
        "same bits from inside and outside the pool"
    );
    let e = cpu::init_threads(Some(2)).expect_err("built once");
    assert!(e.to_string().contains("global pool"), "{e}");
    Ok(())
}

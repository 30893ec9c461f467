//! Property tests (proptest): broadcasting and shape rules, f32 ↔ f16/bf16 casts bit-exact,
//! and matmul / conv2d against naive f64 loops within DESIGN.md's error bound.

mod common;

use common::{check_gemm_bound, conv_ref, matmul_ref};
use hemi::{bf16, f16, Conv2dParams, DType, Device, Generator, Shape, Tensor};
use proptest::prelude::*;

/// Independent round-to-nearest-even f32 → binary16 (sign, 5-bit exponent, 10-bit mantissa).
fn ref_f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | if man == 0 { 0x7c00 } else { 0x7e00 };
    }
    // value = 1.man * 2^(exp-127) (normal) ; f16 normal exponent range -14..=15
    let e = exp - 127;
    if exp == 0 {
        return sign; // f32 subnormals are far below the f16 subnormal range
    }
    let full = man | 0x80_0000; // 24-bit significand
    let (shift, out_exp) = if e >= -14 {
        (13, (e + 15) as u32)
    } else {
        (13 + (-14 - e) as u32, 0)
    };
    if e > 15 {
        return sign | 0x7c00;
    }
    if shift > 24 {
        return sign;
    }
    let kept = full >> shift;
    let rem = full & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    let mut m = if out_exp == 0 { kept } else { kept & 0x3ff };
    let mut ex = out_exp;
    if rem > half || (rem == half && (kept & 1) == 1) {
        m += 1;
        if out_exp == 0 && m == 0x400 {
            ex = 1;
            m = 0;
        } else if out_exp != 0 && m == 0x400 {
            ex += 1;
            m = 0;
        }
    }
    if ex >= 31 {
        return sign | 0x7c00;
    }
    sign | ((ex as u16) << 10) | m as u16
}

/// Independent round-to-nearest-even f32 → bfloat16 (top 16 bits, rounded).
fn ref_f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    let lower = b & 0xffff;
    let mut upper = b >> 16;
    if lower > 0x8000 || (lower == 0x8000 && upper & 1 == 1) {
        upper += 1;
    }
    upper as u16
}

fn cast_bits(values: &[f32], dt: DType) -> Vec<u16> {
    let t = Tensor::from_slice(values, [values.len()], Device::Cpu).expect("tensor");
    match dt {
        DType::F16 => t
            .to_dtype(dt)
            .and_then(|t| t.to_vec::<f16>())
            .expect("f16")
            .iter()
            .map(|x| x.to_bits())
            .collect(),
        _ => t
            .to_dtype(dt)
            .and_then(|t| t.to_vec::<bf16>())
            .expect("bf16")
            .iter()
            .map(|x| x.to_bits())
            .collect(),
    }
}

fn special_f32() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        1e-8,
        2.9802322e-8,
        2.980_232_6e-8,
        5.9604645e-8,
        6.1035156e-5,
        6.097555e-5,
        1.0009766,
        1.0004883,
        1.0014648,
        3.3895314e38,
        3.3961775e38,
    ];
    v.extend((0..40).map(|i| f32::from_bits(0x3380_0000 + i * 0x0010_0001))); // around the f16 subnormal range
    v.push(f32::from_bits(1)); // smallest f32 subnormal
    v
}

#[test]
fn casts_of_special_values_are_bit_exact() {
    let v = special_f32();
    let h = cast_bits(&v, DType::F16);
    let b = cast_bits(&v, DType::BF16);
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(h[i], f16::from_f32(x).to_bits(), "f16 of {x:e} vs half");
        assert_eq!(b[i], bf16::from_f32(x).to_bits(), "bf16 of {x:e} vs half");
        if x.is_nan() {
            assert!(
                f16::from_bits(h[i]).is_nan() && bf16::from_bits(b[i]).is_nan(),
                "NaN stays NaN"
            );
            assert_eq!(h[i] >> 15, (x.to_bits() >> 31) as u16, "NaN keeps its sign");
        } else {
            assert_eq!(h[i], ref_f32_to_f16(x), "f16 of {x:e} vs reference");
            assert_eq!(b[i], ref_f32_to_bf16(x), "bf16 of {x:e} vs reference");
        }
    }
    assert_eq!(
        f16::from_bits(cast_bits(&[65520.0], DType::F16)[0]),
        f16::INFINITY,
        "overflow rounds to inf"
    );
}

#[test]
fn every_f16_and_bf16_widens_exactly_and_round_trips() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    for dt in [DType::F16, DType::BF16] {
        let t = match dt {
            DType::F16 => Tensor::from_vec(
                all.iter().map(|&b| f16::from_bits(b)).collect::<Vec<_>>(),
                [all.len()],
                Device::Cpu,
            ),
            _ => Tensor::from_vec(
                all.iter().map(|&b| bf16::from_bits(b)).collect::<Vec<_>>(),
                [all.len()],
                Device::Cpu,
            ),
        }
        .expect("tensor");
        let wide = t
            .to_dtype(DType::F32)
            .and_then(|w| w.to_vec::<f32>())
            .expect("widen");
        let back = cast_bits(&wide, dt);
        for (i, &b) in all.iter().enumerate() {
            let expect = match dt {
                DType::F16 => f16::from_bits(b).to_f32(),
                _ => bf16::from_bits(b).to_f32(),
            };
            assert!(
                wide[i].to_bits() == expect.to_bits() || (wide[i].is_nan() && expect.is_nan()),
                "{dt} {b:#06x}"
            );
            if !wide[i].is_nan() {
                assert_eq!(back[i], b, "{dt} {b:#06x} round trip");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn f32_to_half_casts_are_bit_exact(bits in proptest::collection::vec(any::<u32>(), 1..300)) {
        let v: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let h = cast_bits(&v, DType::F16);
        let b = cast_bits(&v, DType::BF16);
        for (i, &x) in v.iter().enumerate() {
            prop_assert_eq!(h[i], f16::from_f32(x).to_bits());
            prop_assert_eq!(b[i], bf16::from_f32(x).to_bits());
            if !x.is_nan() {
                prop_assert_eq!(h[i], ref_f32_to_f16(x), "f16 of {:e}", x);
                prop_assert_eq!(b[i], ref_f32_to_bf16(x), "bf16 of {:e}", x);
            }
        }
    }

    #[test]
    fn broadcasting_follows_numpy_rules(
        a in proptest::collection::vec(1usize..4, 0..4),
        b in proptest::collection::vec(1usize..4, 0..4),
        ones_a in proptest::collection::vec(any::<bool>(), 4),
        seed in any::<u64>(),
    ) {
        // Make `a` compatible with `b` on some dims by setting them to 1 or copying b's size.
        let mut a = a;
        let rank = a.len().max(b.len());
        for (i, &one) in ones_a.iter().enumerate().take(a.len().min(b.len())) {
            let (ia, ib) = (a.len() - 1 - i, b.len() - 1 - i);
            if one { a[ia] = 1 } else if a[ia] != b[ib] && a[ia] != 1 && b[ib] != 1 && i % 2 == 0 { a[ia] = b[ib] }
        }
        let mut expected = Some(vec![0usize; rank]);
        for i in 0..rank {
            let da = if i < a.len() { a[a.len() - 1 - i] } else { 1 };
            let db = if i < b.len() { b[b.len() - 1 - i] } else { 1 };
            let d = if da == db || db == 1 { da } else if da == 1 { db } else { expected = None; break };
            if let Some(e) = expected.as_mut() { e[rank - 1 - i] = d }
        }
        let got = Shape::broadcast("prop", &Shape::new(a.clone()), &Shape::new(b.clone()));
        let mut g = Generator::new(seed);
        let ta = common::rand_t(&mut g, &a, DType::F64).expect("a");
        let tb = common::rand_t(&mut g, &b, DType::F64).expect("b");
        let sum = ta.add(&tb);
        match expected {
            None => { prop_assert!(got.is_err()); prop_assert!(sum.is_err()); }
            Some(e) => {
                let got = got.expect("shape");
                prop_assert_eq!(got.dims(), &e[..]);
                let sum = sum.expect("sum");
                prop_assert_eq!(sum.dims(), &e[..]);
                // Element check by explicit index arithmetic.
                let (va, vb, vs) = (ta.to_vec::<f64>().expect("a"), tb.to_vec::<f64>().expect("b"), sum.to_vec::<f64>().expect("s"));
                let n: usize = e.iter().product();
                for (flat, &got) in vs.iter().enumerate().take(n) {
                    let mut rem = flat;
                    let mut idx = vec![0; rank];
                    for d in (0..rank).rev() { idx[d] = rem % e[d]; rem /= e[d]; }
                    let off = |s: &[usize]| {
                        let lead = rank - s.len();
                        s.iter().enumerate().fold(0, |o, (k, &sz)| o * sz + if sz == 1 { 0 } else { idx[lead + k] })
                    };
                    prop_assert_eq!(got, va[off(&a)] + vb[off(&b)]);
                }
            }
        }
    }

    #[test]
    fn matmul_within_gemm_bound(
        m in 1usize..40, k in 1usize..70, n in 1usize..40, batch in 1usize..3,
        ta in any::<bool>(), tb in any::<bool>(), dt_i in 0usize..3, seed in any::<u64>(),
    ) {
        let dt = [DType::F32, DType::F16, DType::BF16][dt_i];
        let mut g = Generator::new(seed);
        // Store transposed when asked, then view back with .t(): exercises strided operands.
        let a = if ta { common::rand_t(&mut g, &[batch, k, m], dt).and_then(|t| t.transpose(1, 2)) } else { common::rand_t(&mut g, &[batch, m, k], dt) }.expect("a");
        let b = if tb { common::rand_t(&mut g, &[batch, n, k], dt).and_then(|t| t.transpose(1, 2)) } else { common::rand_t(&mut g, &[batch, k, n], dt) }.expect("b");
        let c = a.matmul(&b).expect("matmul");
        prop_assert_eq!(c.dims(), &[batch, m, n]);
        prop_assert_eq!(c.dtype(), dt);
        let (av, bv, cv) = (a.to_f64_vec().expect("a"), b.to_f64_vec().expect("b"), c.to_f64_vec().expect("c"));
        for bi in 0..batch {
            let (want, abs) = matmul_ref(&av[bi * m * k..][..m * k], &bv[bi * k * n..][..k * n], m, k, n);
            let r = check_gemm_bound(&cv[bi * m * n..][..m * n], &want, &abs, k, dt);
            prop_assert!(r.is_ok(), "{:?} batch {} {}x{}x{}: {}", dt, bi, m, k, n, r.err().unwrap_or_default());
        }
    }

    #[test]
    fn conv2d_within_gemm_bound(
        n in 1usize..3, cg in 1usize..4, og in 1usize..4, groups in 1usize..3,
        h in 3usize..12, w in 3usize..12, kh in 1usize..4, kw in 1usize..4,
        stride in 1usize..3, pad in 0usize..2, dil in 1usize..3, dt_i in 0usize..3, seed in any::<u64>(),
    ) {
        let dt = [DType::F32, DType::F16, DType::BF16][dt_i];
        prop_assume!(h + 2 * pad > dil * (kh - 1) && w + 2 * pad > dil * (kw - 1));
        let (c, o) = (cg * groups, og * groups);
        let mut g = Generator::new(seed);
        let x = common::rand_t(&mut g, &[n, c, h, w], dt).expect("x");
        let wt = common::rand_t(&mut g, &[o, cg, kh, kw], dt).expect("w");
        let p = Conv2dParams { stride: (stride, stride), padding: (pad, pad), dilation: (dil, dil), groups, out_dtype: None };
        let y = x.conv2d(&wt, None, p).expect("conv2d");
        let (want, abs, oh, ow) = conv_ref(&x.to_f64_vec().expect("x"), &wt.to_f64_vec().expect("w"), (n, c, h, w), (o, kh, kw), p.stride, p.padding, p.dilation, groups);
        prop_assert_eq!(y.dims(), &[n, o, oh, ow]);
        let r = check_gemm_bound(&y.to_f64_vec().expect("y"), &want, &abs, cg * kh * kw, dt);
        prop_assert!(r.is_ok(), "{:?} {:?}: {}", dt, p, r.err().unwrap_or_default());
    }
}

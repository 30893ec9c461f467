//! Bad input gives an `Err` naming the op and the shapes — never a panic.

use hemi::{
    AvgPool2dParams, BatchNormParams, Conv2dParams, CrossEntropySpec, DType, Device, Error,
    MaxPool2dParams, Tensor,
};

fn t(dims: &[usize]) -> Tensor {
    Tensor::ones(dims.to_vec(), DType::F32, Device::Cpu).expect("tensor")
}

fn assert_err_mentions<T: std::fmt::Debug>(r: hemi::Result<T>, words: &[&str]) {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "error `{msg}` should mention `{w}`");
    }
}

#[test]
fn shape_mismatches_name_op_and_shapes() {
    assert_err_mentions(
        t(&[2, 3]).matmul(&t(&[4, 5])),
        &["matmul", "[2, 3]", "[4, 5]"],
    );
    assert_err_mentions(t(&[2, 3]).add(&t(&[4])), &["binary", "[2, 3]", "[4]"]);
    assert_err_mentions(t(&[2, 3]).reshape([7]), &["reshape", "[2, 3]", "[7]"]);
    assert_err_mentions(
        Tensor::from_vec(vec![1.0f32; 5], [2, 3], Device::Cpu),
        &["from_vec", "[2, 3]"],
    );
    assert_err_mentions(
        t(&[1, 3, 8, 8]).conv2d(&t(&[4, 2, 3, 3]), None, Conv2dParams::default()),
        &["conv2d", "[1, 3, 8, 8]", "[4, 2, 3, 3]"],
    );
    assert_err_mentions(
        t(&[2, 3]).mse_loss(&t(&[3, 2]), hemi::Reduction::Mean),
        &["mse_loss", "[2, 3]", "[3, 2]"],
    );
    assert_err_mentions(t(&[2, 3]).permute(&[0, 0]), &["permute"]);
    assert_err_mentions(t(&[2, 3]).sum(5, false), &["sum", "dim 5"]);
    assert_err_mentions(
        t(&[2, 3]).batch_norm(None, None, Some(&t(&[4])), None, BatchNormParams::default()),
        &["batch_norm", "[4]"],
    );
}

#[test]
fn dtype_mismatches_are_errors() {
    let ints = Tensor::from_vec(vec![1i64, 2], [2], Device::Cpu).expect("ints");
    assert!(matches!(ints.exp(), Err(Error::DTypeMismatch { .. })));
    assert!(matches!(
        t(&[2]).to_vec::<f64>(),
        Err(Error::ReadBack { .. })
    ));
    let logits = t(&[2, 3]);
    let float_targets = t(&[2]);
    assert_err_mentions(
        logits.cross_entropy(&float_targets, CrossEntropySpec::default()),
        &["cross_entropy", "int64"],
    );
    assert!(
        t(&[2]).to_scalar::<f32>().is_err(),
        "to_scalar needs exactly one element"
    );
}

#[test]
fn invalid_geometry_is_rejected() {
    let x = t(&[1, 2, 5, 5]);
    let w = t(&[3, 2, 3, 3]);
    let bad_stride = Conv2dParams {
        stride: (0, 1),
        ..Default::default()
    };
    assert_err_mentions(x.conv2d(&w, None, bad_stride), &["conv2d", "stride"]);
    let bad_dil = Conv2dParams {
        dilation: (0, 1),
        ..Default::default()
    };
    assert_err_mentions(x.conv2d(&w, None, bad_dil), &["conv2d", "dilation"]);
    assert_err_mentions(
        x.conv2d(&t(&[3, 2, 7, 7]), None, Conv2dParams::default()),
        &["conv2d", "smaller than"],
    );
    assert_err_mentions(
        x.conv2d(
            &t(&[3, 1, 3, 3]),
            None,
            Conv2dParams {
                groups: 2,
                ..Default::default()
            },
        ),
        &["conv2d", "groups"],
    );
    assert_err_mentions(
        x.conv2d(&t(&[0, 2, 3, 3]), None, Conv2dParams::default()),
        &["conv2d"],
    );
    assert_err_mentions(
        x.max_pool2d(MaxPool2dParams::new(0, 1, 0)),
        &["max_pool2d", "positive"],
    );
    assert_err_mentions(
        x.max_pool2d(MaxPool2dParams::new(2, 2, 2)),
        &["max_pool2d", "padding"],
    );
    assert_err_mentions(
        x.avg_pool2d(AvgPool2dParams::new(7, 1, 0)),
        &["avg_pool2d", "smaller"],
    );
    assert_err_mentions(x.adaptive_avg_pool2d((0, 1)), &["adaptive_avg_pool2d"]);
    assert_err_mentions(
        t(&[1, 3]).batch_norm(None, None, None, None, BatchNormParams::default()),
        &["batch_norm", "more than 1 value"],
    );
    assert_err_mentions(
        Tensor::randint(5, 5, [2], Device::Cpu),
        &["randint", "empty range"],
    );
    assert_err_mentions(
        Tensor::randn([2], DType::I64, Device::Cpu),
        &["randn", "float"],
    );
}

#[test]
fn out_of_range_class_index_is_reported_with_position() {
    let logits = t(&[3, 4]);
    for bad in [4i64, -1, 1000] {
        let targets = Tensor::from_vec(vec![0, bad, 1], [3], Device::Cpu).expect("targets");
        let e = logits
            .cross_entropy(&targets, CrossEntropySpec::default())
            .expect_err("out of range");
        assert_eq!(
            e,
            Error::TargetOutOfRange {
                op: "cross_entropy",
                target: bad,
                index: 1,
                classes: 4
            }
        );
    }
    let smoothing = CrossEntropySpec {
        label_smoothing: 1.5,
        ..Default::default()
    };
    let ok_targets = Tensor::from_vec(vec![0i64, 1, 2], [3], Device::Cpu).expect("targets");
    assert_err_mentions(
        logits.cross_entropy(&ok_targets, smoothing),
        &["label_smoothing"],
    );
}

#[test]
fn unregistered_device_is_an_error_not_a_panic() {
    assert!(matches!(
        Tensor::zeros([2], DType::F32, Device::Cuda(0)),
        Err(Error::Unsupported { .. })
    ));
    assert!(t(&[2]).to_device(Device::CudaSim).is_err());
}

//! One ResNet-18 training step (forward, cross-entropy, backward, Adam) on the CPU at small
//! image sizes, in fp32 and under bf16 autocast. Criterion's throughput is the batch size, so
//! `elem/s` reads as images/s. Run: `cargo bench --bench train_step`
//! (`scripts/compare-torch-cpu.sh` runs the same step against PyTorch). The bench's thread is
//! one of the CPU pool's threads ([`hemi::cpu::init_threads`]).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hemi::amp::autocast;
use hemi::nn::{resnet18, Module};
use hemi::optim::{Adam, AdamConfig, Optimizer};
use hemi::{manual_seed, CrossEntropySpec, DType, Device, Tensor};
use std::time::Duration;

fn train_step(c: &mut Criterion) {
    // (Before any op; should the pool exist already, ops are handed to its workers.)
    if let Err(e) = hemi::cpu::init_threads(None) {
        eprintln!("the calling thread stays outside the pool: {e}");
    }
    let mut group = c.benchmark_group("cpu_resnet18_train_step");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (batch, size) in [(8usize, 64usize), (8, 112)] {
        manual_seed(0);
        let model = resnet18(1000, Device::Cpu).expect("model");
        let mut opt = Adam::new(model.parameters(), AdamConfig::adam()).expect("adam");
        let x = Tensor::randn([batch, 3, size, size], DType::F32, Device::Cpu).expect("x");
        let y = Tensor::randint(0, 1000, [batch], Device::Cpu).expect("y");
        group.throughput(Throughput::Elements(batch as u64));
        for amp in [None, Some(DType::BF16)] {
            let name = amp.map_or("f32".to_string(), |d| format!("{d}_autocast"));
            group.bench_with_input(
                BenchmarkId::new(name, format!("{batch}x3x{size}x{size}")),
                &size,
                |b, _| {
                    b.iter(|| {
                        opt.zero_grad();
                        let loss = {
                            let _region = amp.map(autocast).transpose().expect("autocast");
                            model
                                .forward(&x)
                                .and_then(|l| l.cross_entropy(&y, CrossEntropySpec::default()))
                                .expect("forward")
                        };
                        loss.backward().expect("backward");
                        opt.step().expect("step");
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);

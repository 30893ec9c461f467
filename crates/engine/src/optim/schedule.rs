//! Learning-rate schedules with `torch.optim.lr_scheduler`'s recursions, bit for bit:
//! [`Schedule::Step`] (`StepLR`), [`Schedule::Cosine`] (`CosineAnnealingLR`) and
//! [`Schedule::Linear`] (`LinearLR`, the usual warmup). Each [`LrScheduler::step`] advances
//! one epoch (or iteration: the caller decides) and sets the optimizer's rate; the state to
//! save for an exact resume is the step count and the current rate ([`LrScheduler::state`]).
//!
//! ```
//! use hemi_engine::optim::{LrScheduler, Optimizer, Schedule, Sgd, SgdConfig};
//! use hemi_engine::{DType, Device, Tensor};
//! let w = Tensor::zeros([1], DType::F32, Device::Cpu)?.requires_grad_(true)?;
//! let mut opt = Sgd::new(vec![w], SgdConfig::new(0.1))?;
//! let mut sched = LrScheduler::new(Schedule::Step { step_size: 2, gamma: 0.5 }, &mut opt)?;
//! let mut lrs = vec![opt.lr()];
//! for _ in 0..4 {
//!     opt.step()?;
//!     sched.step(&mut opt)?;
//!     lrs.push(opt.lr());
//! }
//! assert_eq!(lrs, vec![0.1, 0.1, 0.05, 0.05, 0.025]);
//! # Ok::<(), hemi_engine::Error>(())
//! ```

use super::Optimizer;
use crate::{Error, Result};

/// Which schedule (PyTorch's class and arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `StepLR(step_size, gamma)`: the rate times `gamma` every `step_size` steps.
    Step {
        /// Steps between decays (> 0).
        step_size: u64,
        /// Decay factor.
        gamma: f64,
    },
    /// `CosineAnnealingLR(T_max, eta_min)`: half a cosine from the base rate down to
    /// `eta_min` over `t_max` steps (and back up after, as PyTorch's).
    Cosine {
        /// Steps of the half period (> 0).
        t_max: u64,
        /// The lowest rate.
        eta_min: f64,
    },
    /// `LinearLR(start_factor, end_factor, total_iters)`: the base rate times a factor going
    /// linearly from `start_factor` to `end_factor` over `total_iters` steps (warmup).
    Linear {
        /// Factor at step 0 (in `(0, 1]`).
        start_factor: f64,
        /// Factor from step `total_iters` on (in `[0, 1]`).
        end_factor: f64,
        /// Steps of the ramp.
        total_iters: u64,
    },
}

/// A schedule applied to an optimizer's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct LrScheduler {
    schedule: Schedule,
    base_lr: f64,
    last_epoch: u64,
    lr: f64,
}

/// What an exact resume needs: the step count and the current rate (the recursions continue
/// from the rate, as PyTorch's do).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerState {
    /// Steps taken (`last_epoch`).
    pub last_epoch: u64,
    /// The base rate (`initial_lr`).
    pub base_lr: f64,
    /// The current rate.
    pub lr: f64,
}

impl LrScheduler {
    /// Starts `schedule` from the optimizer's current rate (its base rate) and sets the rate
    /// of step 0 (PyTorch's constructor does the same first step).
    pub fn new(schedule: Schedule, opt: &mut dyn Optimizer) -> Result<Self> {
        let bad = |msg: String| Err(Error::invalid("LrScheduler", msg));
        match schedule {
            Schedule::Step { step_size: 0, .. } => return bad("step_size must be positive".into()),
            Schedule::Cosine { t_max: 0, .. } => return bad("t_max must be positive".into()),
            Schedule::Linear {
                start_factor: s,
                end_factor: e,
                ..
            } if !(s > 0.0 && s <= 1.0 && (0.0..=1.0).contains(&e)) => {
                return bad(format!(
                    "start_factor {s} must be in (0, 1] and end_factor {e} in [0, 1]"
                ))
            }
            _ => {}
        }
        let base_lr = opt.lr();
        let mut s = LrScheduler {
            schedule,
            base_lr,
            last_epoch: 0,
            lr: base_lr,
        };
        s.lr = s.next_lr(base_lr);
        opt.set_lr(s.lr)?;
        Ok(s)
    }

    /// The rate at `self.last_epoch`, from the rate before it (PyTorch's `get_lr`).
    fn next_lr(&self, lr: f64) -> f64 {
        let t = self.last_epoch;
        match self.schedule {
            Schedule::Step { step_size, gamma } => {
                if t == 0 || !t.is_multiple_of(step_size) {
                    lr
                } else {
                    lr * gamma
                }
            }
            Schedule::Cosine { t_max, eta_min } => {
                let pi = std::f64::consts::PI;
                let (tf, tm) = (t as f64, t_max as f64);
                if t == 0 {
                    lr
                } else if (t as i128 - 1 - t_max as i128).rem_euclid(2 * t_max as i128) == 0 {
                    lr + (self.base_lr - eta_min) * (1.0 - (pi / tm).cos()) / 2.0
                } else {
                    (1.0 + (pi * tf / tm).cos()) / (1.0 + (pi * (tf - 1.0) / tm).cos())
                        * (lr - eta_min)
                        + eta_min
                }
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if t == 0 {
                    lr * start_factor
                } else if t > total_iters {
                    lr
                } else {
                    lr * (1.0
                        + (end_factor - start_factor)
                            / (total_iters as f64 * start_factor
                                + (t as f64 - 1.0) * (end_factor - start_factor)))
                }
            }
        }
    }

    /// Advances one step and sets the optimizer's rate.
    pub fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        self.last_epoch += 1;
        let lr = self.next_lr(self.lr);
        opt.set_lr(lr)?;
        self.lr = lr;
        Ok(())
    }

    /// The current rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The schedule.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The state to save.
    pub fn state(&self) -> SchedulerState {
        SchedulerState {
            last_epoch: self.last_epoch,
            base_lr: self.base_lr,
            lr: self.lr,
        }
    }

    /// Continues from a saved state and sets the optimizer's rate to its rate.
    pub fn load_state(&mut self, state: SchedulerState, opt: &mut dyn Optimizer) -> Result<()> {
        opt.set_lr(state.lr)?;
        self.last_epoch = state.last_epoch;
        self.base_lr = state.base_lr;
        self.lr = state.lr;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Sgd, SgdConfig};
    use crate::{DType, Device, Tensor};

    /// The rates of `schedule` from a base of 0.1 over `n` steps.
    fn rates(schedule: Schedule, n: usize) -> Vec<f64> {
        let w = Tensor::zeros([1], DType::F32, Device::Cpu).expect("w");
        let mut opt = Sgd::new(vec![w], SgdConfig::new(0.1)).expect("sgd");
        let mut s = LrScheduler::new(schedule, &mut opt).expect("schedule");
        let mut out = vec![opt.lr()];
        for _ in 0..n {
            s.step(&mut opt).expect("step");
            out.push(opt.lr());
        }
        out
    }

    fn hex(v: &[f64]) -> Vec<String> {
        v.iter().map(|x| format!("{:016x}", x.to_bits())).collect()
    }

    /// `float.hex` of PyTorch 2.15's rates (`SGD(lr=0.1)`, one scheduler step per step) as
    /// bit patterns.
    fn torch(values: &[&str]) -> Vec<String> {
        values
            .iter()
            .map(|h| {
                // "0x1.<13 hex digits>p<exp>"
                let (mant, exp) = h.trim_start_matches("0x1.").split_once('p').expect("hex");
                let m = u64::from_str_radix(mant, 16).expect("mantissa");
                let e: i64 = exp.parse().expect("exponent");
                format!("{:016x}", (((e + 1023) as u64) << 52) | m)
            })
            .collect()
    }

    #[test]
    fn rates_equal_pytorch_bit_for_bit() {
        let step = torch(&[
            "0x1.999999999999ap-4",
            "0x1.999999999999ap-4",
            "0x1.999999999999ap-4",
            "0x1.47ae147ae147cp-7",
            "0x1.47ae147ae147cp-7",
            "0x1.47ae147ae147cp-7",
            "0x1.0624dd2f1a9fdp-10",
            "0x1.0624dd2f1a9fdp-10",
            "0x1.0624dd2f1a9fdp-10",
            "0x1.a36e2eb1c432fp-14",
            "0x1.a36e2eb1c432fp-14",
        ]);
        assert_eq!(
            hex(&rates(
                Schedule::Step {
                    step_size: 3,
                    gamma: 0.1
                },
                10
            )),
            step
        );
        let cosine = torch(&[
            "0x1.999999999999ap-4",
            "0x1.8556b56b101d1p-4",
            "0x1.4c915cb2b0363p-4",
            "0x1.f51022bb7cd13p-5",
            "0x1.3ef4c78f0f445p-5",
            "0x1.35c461ca57521p-6",
            "0x1.4abbfba35ed9dp-8",
            "0x1.a36e2eb1c432dp-14",
            "0x1.4abbfba35ed97p-8",
            "0x1.35c461ca5751ep-6",
            "0x1.3ef4c78f0f443p-5",
            "0x1.f51022bb7cd0cp-5",
            "0x1.4c915cb2b0362p-4",
            "0x1.8556b56b101d3p-4",
            "0x1.999999999999bp-4",
            "0x1.8556b56b101d4p-4",
            "0x1.4c915cb2b0365p-4",
            "0x1.f51022bb7cd10p-5",
            "0x1.3ef4c78f0f447p-5",
            "0x1.35c461ca57525p-6",
            "0x1.4abbfba35eda5p-8",
        ]);
        assert_eq!(
            hex(&rates(
                Schedule::Cosine {
                    t_max: 7,
                    eta_min: 1e-4
                },
                20
            )),
            cosine
        );
        let linear = torch(&[
            "0x1.999999999999ap-6",
            "0x1.6666666666667p-5",
            "0x1.0000000000001p-4",
            "0x1.4cccccccccccep-4",
            "0x1.999999999999bp-4",
            "0x1.999999999999bp-4",
            "0x1.999999999999bp-4",
            "0x1.999999999999bp-4",
            "0x1.999999999999bp-4",
        ]);
        let warmup = Schedule::Linear {
            start_factor: 0.25,
            end_factor: 1.0,
            total_iters: 4,
        };
        assert_eq!(hex(&rates(warmup, 8)), linear);
    }

    #[test]
    fn a_resumed_schedule_continues_exactly_and_bad_arguments_are_errors() {
        let w = Tensor::zeros([1], DType::F32, Device::Cpu).expect("w");
        let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.1)).expect("sgd");
        let cos = Schedule::Cosine {
            t_max: 5,
            eta_min: 0.0,
        };
        let mut s = LrScheduler::new(cos, &mut opt).expect("new");
        for _ in 0..3 {
            s.step(&mut opt).expect("step");
        }
        let saved = s.state();
        let mut opt2 = Sgd::new(vec![w], SgdConfig::new(0.1)).expect("sgd");
        let mut s2 = LrScheduler::new(cos, &mut opt2).expect("new");
        s2.load_state(saved, &mut opt2).expect("load");
        for _ in 0..4 {
            s.step(&mut opt).expect("step");
            s2.step(&mut opt2).expect("step");
            assert_eq!(opt.lr().to_bits(), opt2.lr().to_bits());
        }
        for bad in [
            Schedule::Step {
                step_size: 0,
                gamma: 0.1,
            },
            Schedule::Cosine {
                t_max: 0,
                eta_min: 0.0,
            },
            Schedule::Linear {
                start_factor: 0.0,
                end_factor: 1.0,
                total_iters: 3,
            },
        ] {
            assert!(LrScheduler::new(bad, &mut opt).is_err(), "{bad:?}");
        }
    }
}

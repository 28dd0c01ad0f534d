//! Optimizers, schedules and clipping against PyTorch and transformers.
//!
//! Reference numbers were produced with PyTorch 2.15 (CPU, float32) and transformers, by
//! running the same steps with `torch.optim.{AdamW,Adam,SGD,RMSprop}` (lr set per step),
//! `torch.nn.utils.clip_grad_norm_`, `get_{linear,cosine,constant}_schedule_with_warmup` and
//! `torch.optim.lr_scheduler.StepLR`: `tests/reference/{optim,sched}_ref.py` (`pip install
//! torch transformers`), the same `P0`, `GRADS` and `LRS` as below, each group's `lr`
//! overwritten before each `step()`.

use candle_core::{Device, Tensor, Var};
use training::optim::{Optimizer, OptimizerSettings};
use training::schedule::{warmup_steps, Schedule, ScheduleKind};

const P0: [f32; 6] = [0.5, -1.25, 2.0, 0.0, 0.75, -0.3];
const GRADS: [[f32; 6]; 3] = [
    [0.1, -0.2, 0.3, 0.05, 0.0, -1.5],
    [-0.4, 0.25, 0.0, 1.0, -0.6, 0.2],
    [0.3, 0.3, -0.7, -0.2, 0.9, 0.01],
];
const LRS: [f64; 3] = [0.01, 0.02, 0.005];

fn var(values: &[f32]) -> Var {
    Var::from_tensor(&Tensor::from_slice(values, (2, 3), &Device::Cpu).unwrap()).unwrap()
}

/// Gradients equal to `g`: d/dp sum(p * g) = g.
fn step(opt: &mut Optimizer, p: &Var, g: &[f32], lr: f64) {
    let c = Tensor::from_slice(g, (2, 3), &Device::Cpu).unwrap();
    let grads = (p.as_tensor() * c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    opt.step(&grads, lr).unwrap();
}

fn values(p: &Var) -> Vec<f32> {
    p.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

fn run(kind: OptimizerSettings, steps: usize) -> Vec<f32> {
    let p = var(&P0);
    let mut opt = Optimizer::new(kind, vec![("p".into(), p.clone())]).unwrap();
    for (g, lr) in GRADS.iter().zip(LRS).take(steps) {
        step(&mut opt, &p, g, lr);
    }
    values(&p)
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    test_support::compare::assert_close(got, want, tol, what);
}

fn adamw(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> OptimizerSettings {
    OptimizerSettings::adamw(beta1, beta2, eps, weight_decay)
}

fn cases() -> Vec<(&'static str, OptimizerSettings, [f64; 6])> {
    vec![
        (
            "adamw",
            adamw(0.9, 0.999, 1e-8, 0.01),
            [
                0.5008854269981384,
                -1.2454631328582764,
                1.9778190851211548,
                -0.02784740924835205,
                0.7635563015937805,
                -0.27641698718070984,
            ],
        ),
        (
            "adamw_wd0",
            adamw(0.8, 0.99, 1e-6, 0.0),
            [
                0.5018627643585205,
                -1.2474201917648315,
                1.9797568321228027,
                -0.028477342799305916,
                0.7643007636070251,
                -0.27772894501686096,
            ],
        ),
        (
            "adam",
            OptimizerSettings::adam(0.9, 0.999, 1e-8, 0.0),
            [
                0.5010584592819214,
                -1.2458982467651367,
                1.978515863418579,
                -0.0278506837785244,
                0.7638195157051086,
                -0.27651888132095337,
            ],
        ),
        (
            "adam_wd",
            OptimizerSettings::adam(0.9, 0.999, 1e-8, 0.1),
            [
                0.49746328592300415,
                -1.2331076860427856,
                1.9716910123825073,
                -0.027841582894325256,
                0.7512248754501343,
                -0.27604472637176514,
            ],
        ),
        (
            "sgd",
            OptimizerSettings::sgd(0.0, 0.0),
            [
                0.5055000185966492,
                -1.2545000314712524,
                2.000499963760376,
                -0.019499998539686203,
                0.7575000524520874,
                -0.28905004262924194,
            ],
        ),
        (
            "sgd_momentum_wd",
            OptimizerSettings::sgd(0.9, 0.01),
            [
                0.504787266254425,
                -1.2504462003707886,
                1.9926552772521973,
                -0.025101305916905403,
                0.7597377896308899,
                -0.256695955991745,
            ],
        ),
        (
            "rmsprop",
            OptimizerSettings::rmsprop(0.99, 1e-8, 0.0, 0.0),
            [
                0.564565896987915,
                -1.340794563293457,
                1.946028470993042,
                -0.289911150932312,
                0.9083332419395447,
                -0.22689729928970337,
            ],
        ),
        (
            "rmsprop_momentum_wd",
            OptimizerSettings::rmsprop(0.99, 1e-8, 0.9, 0.01),
            [
                0.3864884674549103,
                -1.1464967727661133,
                1.7102488279342651,
                -0.5551182627677917,
                0.6325884461402893,
                -0.011975159868597984,
            ],
        ),
    ]
}

#[test]
fn optimizers_match_pytorch() {
    for (name, kind, want) in cases() {
        assert_close(&run(kind, 3), &want, 2e-6, name);
    }
}

/// Exported after one step and imported into a fresh optimizer, the state continues the run
/// bit for bit.
#[test]
fn state_export_import_resumes_exactly() {
    for (name, kind, _) in cases() {
        let p = var(&P0);
        let mut opt = Optimizer::new(kind, vec![("p".into(), p.clone())]).unwrap();
        step(&mut opt, &p, &GRADS[0], LRS[0]);
        let state = opt.export_state().unwrap();
        assert_eq!(state.steps, 1);

        let q = var(&values(&p));
        let mut resumed = Optimizer::new(kind, vec![("p".into(), q.clone())]).unwrap();
        resumed.import_state(state).unwrap();
        for (g, lr) in GRADS.iter().zip(LRS).skip(1) {
            step(&mut resumed, &q, g, lr);
        }
        assert_eq!(values(&q), run(kind, 3), "{name}");
        assert_eq!(resumed.steps(), 3);
    }
}

#[test]
fn import_rejects_foreign_state() {
    let p = var(&P0);
    let mut opt =
        Optimizer::new(adamw(0.9, 0.999, 1e-8, 0.0), vec![("p".into(), p.clone())]).unwrap();
    step(&mut opt, &p, &GRADS[0], 0.1);
    let state = opt.export_state().unwrap();
    let mut other = Optimizer::new(adamw(0.9, 0.999, 1e-8, 0.0), vec![("q".into(), p)]).unwrap();
    assert!(other.import_state(state).is_err());
}

#[test]
fn clipping_matches_pytorch() {
    let a =
        Var::from_tensor(&Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
    let b = Var::from_tensor(&Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let ga = Tensor::from_slice(&GRADS[0], (2, 3), &Device::Cpu).unwrap();
    let gb = Tensor::new(&[0.5f32, -2.0, 1.0, 0.25], &Device::Cpu).unwrap();
    let loss = ((a.as_tensor() * &ga).unwrap().sum_all().unwrap()
        + (b.as_tensor() * &gb).unwrap().sum_all().unwrap())
    .unwrap();
    let vars = [a.clone(), b.clone()];
    let grad_values = |grads: &candle_core::backprop::GradStore, v: &Var| -> Vec<f32> {
        grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };

    let mut grads = loss.backward().unwrap();
    let total = training::clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
    assert!((total - 2.7757880687713623).abs() < 1e-6, "{total}");
    assert_close(
        &grad_values(&grads, &a),
        &[
            0.036025792360305786,
            -0.07205158472061157,
            0.10807738453149796,
            0.018012896180152893,
            0.0,
            -0.5403869152069092,
        ],
        1e-7,
        "a",
    );
    assert_close(
        &grad_values(&grads, &b),
        &[
            0.18012896180152893,
            -0.7205158472061157,
            0.36025792360305786,
            0.09006448090076447,
        ],
        1e-7,
        "b",
    );

    // Below the limit nothing changes, bit for bit.
    let mut grads = loss.backward().unwrap();
    training::clip_grad_norm(&mut grads, &vars, 100.0).unwrap();
    assert_eq!(grad_values(&grads, &a), GRADS[0].to_vec());
    assert_eq!(grad_values(&grads, &b), vec![0.5, -2.0, 1.0, 0.25]);
}

/// The rates of steps 0..n; a step schedule multiplies by 0.5 every 3 steps.
fn lrs(kind: ScheduleKind, base_lr: f64, warmup_steps: u64, total_steps: u64, n: u64) -> Vec<f64> {
    let s = Schedule {
        kind,
        base_lr,
        warmup_steps,
        total_steps,
        step_size: 3,
        gamma: 0.5,
    };
    (0..n).map(|t| s.lr(t)).collect()
}

#[track_caller]
fn assert_lrs(got: &[f64], want: &[f64], what: &str) {
    test_support::compare::assert_close(got, want, 1e-15, what);
}

#[test]
fn schedules_match_transformers() {
    assert_lrs(
        &lrs(ScheduleKind::Linear, 0.1, 3, 10, 12),
        &[
            0.0,
            0.03333333333333333,
            0.06666666666666667,
            0.1,
            0.08571428571428572,
            0.07142857142857144,
            0.05714285714285714,
            0.04285714285714286,
            0.02857142857142857,
            0.014285714285714285,
            0.0,
            0.0,
        ],
        "linear",
    );
    assert_lrs(
        &lrs(ScheduleKind::Cosine, 0.1, 2, 10, 11),
        &[
            0.0,
            0.05,
            0.1,
            0.09619397662556434,
            0.08535533905932738,
            0.0691341716182545,
            0.05,
            0.030865828381745515,
            0.014644660940672627,
            0.0038060233744356634,
            0.0,
        ],
        "cosine",
    );
    assert_lrs(
        &lrs(ScheduleKind::Constant, 0.1, 4, 10, 6),
        &[0.0, 0.025, 0.05, 0.07500000000000001, 0.1, 0.1],
        "constant",
    );
    assert_lrs(
        &lrs(ScheduleKind::Constant, 0.1, 0, 10, 3),
        &[0.1; 3],
        "constant, no warmup",
    );
    let step = ScheduleKind::Step;
    assert_lrs(
        &lrs(step, 0.1, 0, 10, 10),
        &[0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125],
        "StepLR",
    );
    // With warmup, StepLR's count starts when warmup ends.
    assert_lrs(
        &lrs(step, 0.1, 2, 10, 6),
        &[0.0, 0.05, 0.1, 0.1, 0.1, 0.05],
        "step with warmup",
    );
    // The fixture's run: linear, warmup 1, total 5.
    assert_lrs(
        &lrs(ScheduleKind::Linear, 5e-3, 1, 5, 5),
        &[0.0, 0.005, 0.00375, 0.0025, 0.00125],
        "fixture",
    );
}

#[test]
fn warmup_ratio_rounds_up_like_transformers() {
    assert_eq!(warmup_steps(0, 0.15, 10), 2);
    assert_eq!(warmup_steps(0, 0.1, 7), 1);
    assert_eq!(warmup_steps(0, 0.0, 7), 0);
    assert_eq!(warmup_steps(5, 0.5, 100), 5);
}

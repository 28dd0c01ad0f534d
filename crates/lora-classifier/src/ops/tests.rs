//! Computing only the first rows of each sequence (`Ctx::first_rows`, BERT's last layer) gives
//! those rows exactly as the full computation does, dropout masks included: each op with a
//! dropout site is run on the full tensors and on their first row, fused and composed.

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};

use crate::activation::Act;
use crate::ops::{self, Ctx, Frozen, KeyMask, MASKED};
use crate::test_util::max_diff;

const SEED: u64 = 11;
const P: f64 = 0.3;

/// Deterministic values in (-1, 1).
fn values(n: usize, salt: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = common::hash::splitmix64(i ^ (salt << 32));
            (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn tensor(dims: &[usize], salt: u64) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(values(n, salt), dims, &Device::Cpu).unwrap()
}

fn ctx(fused: bool) -> Ctx {
    Ctx {
        fused,
        dropout_seed: Some(SEED),
        detach: false,
        rows: None,
    }
}

fn first_row(t: &Tensor) -> Tensor {
    t.narrow(1, 0, 1).unwrap()
}

const B: usize = 3;
const N: usize = 7;
const H: usize = 12;

#[test]
fn dropout_and_layer_norm_of_the_first_row_are_the_full_ones() {
    for fused in [true, false] {
        let c = ctx(fused);
        let rows = c.first_rows(1, N);
        let (x, r) = (tensor(&[B, N, H], 1), tensor(&[B, N, H], 2));
        let (w, b) = (tensor(&[H], 3), tensor(&[H], 4));
        let key = c.dropout(P, 5);

        let full = ops::dropout(&x, key, &c).unwrap();
        let part = ops::dropout(&first_row(&x), key, &rows).unwrap();
        assert_eq!(
            max_diff(&first_row(&full), &part),
            0.0,
            "dropout, fused {fused}"
        );
        // The first rows hold dropped elements: the masks are compared, not only kept values.
        let zeros = part.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(zeros.contains(&0.0), "dropout drops some of the first rows");

        let full = ops::add_layer_norm(&x, key, &r, &w, &b, 1e-5, &c).unwrap();
        let part =
            ops::add_layer_norm(&first_row(&x), key, &first_row(&r), &w, &b, 1e-5, &rows).unwrap();
        let d = max_diff(&first_row(&full), &part);
        assert!(d < 1e-6, "add + LayerNorm, fused {fused}: {d}");
    }
}

#[test]
fn lora_linear_of_the_first_row_is_the_full_one() {
    let c = ctx(true);
    let (x, w, bias) = (tensor(&[B, N, H], 1), tensor(&[5, H], 2), tensor(&[5], 3));
    let (a, b) = (tensor(&[4, H], 4), tensor(&[5, 4], 5));
    let f = Frozen {
        w: &w,
        b: Some(&bias),
        conv1d: false,
        packed: None,
    };
    let key = c.dropout(P, 6);
    let full = ops::lora_linear(&x, f, &a, &b, 2.0, key, &c)
        .unwrap()
        .unwrap();
    let rows = c.first_rows(1, N);
    let part = ops::lora_linear(&first_row(&x), f, &a, &b, 2.0, key, &rows)
        .unwrap()
        .unwrap();
    let d = max_diff(&first_row(&full), &part);
    assert!(d < 1e-6, "fused LoRA linear: {d}");
    let no_drop = ops::lora_linear(&first_row(&x), f, &a, &b, 2.0, None, &rows)
        .unwrap()
        .unwrap();
    assert!(
        max_diff(&part, &no_drop) > 1e-3,
        "the LoRA dropout is active"
    );
    let plain = ops::linear(&first_row(&x), f, Act::None, &rows).unwrap();
    assert!(
        max_diff(&part, &plain) > 1e-3,
        "the LoRA branch adds something"
    );
}

/// Attention of the first query over every key: its output and the gradients of q, k and v
/// for a loss on that row equal those of the full attention.
#[test]
fn attention_of_the_first_query_is_the_full_one() {
    let (heads, hid) = (3, 12);
    // Batch 1 has its last two keys masked.
    let bias: Vec<f32> = (0..B * N)
        .map(|i| {
            if i / N == 1 && i % N >= N - 2 {
                MASKED
            } else {
                0.0
            }
        })
        .collect();
    let mask = KeyMask {
        tensor: Tensor::from_slice(&bias, (B, N), &Device::Cpu).unwrap(),
        bias: Arc::new(bias),
        batch: B,
        seq: N,
    };
    let g = tensor(&[B, 1, hid], 9);
    for fused in [true, false] {
        for causal in [false, true] {
            let c = ctx(fused);
            let key = c.dropout(P, 7);
            let spec = |key| ops::AttentionSpec {
                heads,
                scale: 0.5,
                causal,
                mask: &mask,
                key,
            };
            let [q, k, v] = [1, 2, 3].map(|s| Var::from_tensor(&tensor(&[B, N, hid], s)).unwrap());
            let run = |query: &Tensor, c: &Ctx| {
                let out = ops::attention(query, &k, &v, spec(key), c, false)
                    .unwrap()
                    .0;
                let loss = (first_row(&out) * &g).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let [dq, dk, dv] = [&q, &k, &v].map(|t| grads.get(t).unwrap().clone());
                (first_row(&out), dq, dk, dv)
            };
            let full = run(q.as_tensor(), &c);
            let part = run(&first_row(q.as_tensor()), &c.first_rows(1, N));
            let what = format!("attention, fused {fused}, causal {causal}");
            for (name, a, b) in [
                ("output", &full.0, &part.0),
                ("dq", &full.1, &part.1),
                ("dk", &full.2, &part.2),
                ("dv", &full.3, &part.3),
            ] {
                let d = max_diff(a, b);
                assert!(d < 1e-5, "{what}: {name} differs by {d}");
            }
            let none = ops::attention(
                &first_row(q.as_tensor()),
                &k,
                &v,
                spec(None),
                &c.first_rows(1, N),
                false,
            )
            .unwrap()
            .0;
            assert!(
                max_diff(&part.0, &none) > 1e-4,
                "{what}: the dropout is active"
            );
        }
    }
    // A query count that does not match the rows of the pass is refused.
    let c = ctx(true);
    let t = tensor(&[B, N, hid], 1);
    let spec = ops::AttentionSpec {
        heads,
        scale: 0.5,
        causal: false,
        mask: &mask,
        key: None,
    };
    let err = ops::attention(&first_row(&t), &t, &t, spec, &c, false);
    assert!(err.is_err(), "1 query row in a pass over all rows");
}

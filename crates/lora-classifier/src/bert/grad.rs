//! BERT's training step with a hand-written backward pass: the forward pass keeps what each
//! layer's backward pass needs ([`Tape`]), and the backward pass runs the ops' own gradients
//! (`ops::*_grad`, `ops::AttentionTape`) through the layers in reverse. Only the LoRA matrices
//! (and, in `classifier`, the head) receive gradients: no autograd graph is built, no frozen
//! weight's gradient is computed, and nothing below layer 0. candle's autograd over
//! `Bert::forward` is the reference it is tested against (tests/hand_written_backward.rs).

use candle_core::{Tensor, Var};

use super::Bert;
use crate::dropout_mask::layer_site;
use crate::ops::{self, AttentionTape, Ctx, KeyMask};

/// What one encoder layer's backward pass needs from its forward pass.
pub(super) struct LayerTape {
    /// The layer's input, and the rows its queries read (all, or [CLS] in the last layer).
    pub x: Tensor,
    pub xq: Tensor,
    pub attention: AttentionTape,
    /// The attention's output, the attention output dense's, the first LayerNorm's.
    pub a: Tensor,
    pub o: Tensor,
    pub y: Tensor,
    /// The intermediate dense's output (GELU's input), GELU's output, the output dense's.
    pub h_pre: Tensor,
    pub h: Tensor,
    pub f: Tensor,
    /// The pass over the rows this layer computes (see `Ctx::first_rows`).
    pub rows_ctx: Ctx,
}

/// A forward pass's record for [`Bert::backward`].
#[derive(Default)]
pub(crate) struct Tape {
    pub(super) layers: Vec<LayerTape>,
    /// The pooler's input ([CLS] of the last layer) and output (after tanh).
    pub(super) cls: Option<Tensor>,
    pub(super) pooled: Option<Tensor>,
}

impl Bert {
    /// Whether the hand-written backward pass covers this model: every LoRA layer without a
    /// trained bias or a LayerNorm on its branch, unmerged, no LayerNorm bias training.
    pub fn has_plain_grad(&self) -> bool {
        let layers = self.layers.iter().all(|l| {
            [
                &l.query,
                &l.key,
                &l.value,
                &l.attn_out,
                &l.intermediate,
                &l.output,
            ]
            .iter()
            .all(|lin| lin.has_plain_grad())
                && l.attn_norm.has_plain_grad()
                && l.out_norm.has_plain_grad()
        });
        layers && self.pooler.has_plain_grad() && self.emb_norm.has_plain_grad()
    }

    /// Whether the ops' kernels apply to this model's activations (those of its embeddings).
    pub fn has_kernels(&self) -> bool {
        ops::kernels_apply(&self.word)
    }

    /// `forward` outside autograd, with the record its backward pass takes.
    pub fn forward_saving(
        &self,
        ids: &Tensor,
        mask: &KeyMask,
        ctx: &Ctx,
    ) -> candle_core::Result<(Tensor, Tape)> {
        let mut tape = Tape::default();
        let features = self.run(ids, mask, ctx, Some(&mut tape))?;
        Ok((features, tape))
    }

    /// The gradients of the LoRA matrices, pushed to `grads`, for the gradient `dfeatures` of
    /// the classifier's input that `forward_saving` returned.
    pub fn backward(
        &self,
        tape: &Tape,
        dfeatures: &Tensor,
        ctx: &Ctx,
        grads: &mut Vec<(Var, Tensor)>,
    ) -> candle_core::Result<()> {
        let c = &self.cfg;
        let (Some(cls), Some(pooled)) = (&tape.cls, &tape.pooled) else {
            candle_core::bail!("bert backward: the tape holds no forward pass")
        };
        // dropout(tanh(pooler(cls))): tanh' = 1 − tanh².
        let p = c.classifier_dropout.unwrap_or(c.hidden_dropout_prob);
        let dpooled = ops::dropout(dfeatures, ctx.dropout(p, 2), ctx)?;
        let dpre = (dpooled * (1.0 - pooled.sqr()?)?)?;
        let dcls = self.pooler.grad(cls, &dpre, true, ctx, grads)?;
        let mut dx = dcls.expect("asked for").unsqueeze(1)?;
        let last = self.layers.len() - 1;
        for (i, (l, t)) in self.layers.iter().zip(&tape.layers).enumerate().rev() {
            let rc = &t.rows_ctx;
            let key = |which| ctx.dropout(c.hidden_dropout_prob, layer_site(i, which));
            // out = LayerNorm(dropout(f) + y)
            let (df, dy_residual) = l.out_norm.grad_add(&t.f, key(2), &t.y, &dx, rc)?;
            let dh = l
                .output
                .grad(&t.h, &df, true, rc, grads)?
                .expect("asked for");
            let dh_pre = ops::activation_grad(&t.h_pre, self.act, &dh, rc)?;
            let dy = l.intermediate.grad(&t.y, &dh_pre, true, rc, grads)?;
            let dy = (dy.expect("asked for") + dy_residual)?;
            // y = LayerNorm(dropout(o) + xq)
            let (d_o, dxq_residual) = l.attn_norm.grad_add(&t.o, key(1), &t.xq, &dy, rc)?;
            let da = l
                .attn_out
                .grad(&t.a, &d_o, true, rc, grads)?
                .expect("asked for");
            let (dq, dk, dv) = t.attention.grads(&da, rc)?;
            // Layer 0's input (the embeddings) needs no gradient: LoRA's alone are computed.
            let below = i > 0;
            let dxq = l.query.grad(&t.xq, &dq, below, rc, grads)?;
            let dxk = l.key.grad(&t.x, &dk, below, ctx, grads)?;
            let dxv = l.value.grad(&t.x, &dv, below, ctx, grads)?;
            if let (Some(dxq), Some(dxk), Some(dxv)) = (dxq, dxk, dxv) {
                let dxq = (dxq + dxq_residual)?;
                let d = (dxk + dxv)?;
                dx = if i == last {
                    // The queries read the [CLS] rows only: their gradient lands there.
                    let n = d.dim(1)?;
                    let first = (d.narrow(1, 0, 1)? + dxq)?;
                    match n {
                        1 => first,
                        _ => Tensor::cat(&[&first, &d.narrow(1, 1, n - 1)?], 1)?,
                    }
                } else {
                    (d + dxq)?
                };
            }
        }
        Ok(())
    }
}

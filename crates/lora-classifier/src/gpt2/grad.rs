//! GPT-2's training step with a hand-written backward pass, as BERT's (`bert::grad`): the
//! forward pass keeps what each block's backward pass needs ([`Tape`]), and the backward pass
//! runs the ops' own gradients through the blocks in reverse, computing the gradients of the
//! LoRA matrices only (the head's are the classifier's): no autograd graph, no gradient of a
//! frozen weight, nothing below block 0. Tested against autograd in
//! tests/hand_written_backward.rs.

use candle_core::{Tensor, Var};

use super::Gpt2;
use crate::dropout_mask::layer_site;
use crate::ops::{self, AttentionTape, Ctx};

/// What one block's backward pass needs from its forward pass.
pub(super) struct BlockTape {
    /// The block's input, ln_1's output, the attention (and its output), the residual sum
    /// after attention, ln_2's output, c_fc's output (the activation's input) and the
    /// activation's output.
    pub x: Tensor,
    pub ln1: Tensor,
    pub attention: AttentionTape,
    pub att: Tensor,
    pub mid: Tensor,
    pub ln2: Tensor,
    pub h_pre: Tensor,
    pub m: Tensor,
}

/// A forward pass's record for [`Gpt2::backward`].
#[derive(Default)]
pub(crate) struct Tape {
    pub(super) blocks: Vec<BlockTape>,
    /// ln_f's input.
    pub(super) last: Option<Tensor>,
}

impl Gpt2 {
    /// Whether the hand-written backward pass covers this model: every LoRA layer without a
    /// trained bias or a LayerNorm on its branch, unmerged, no LayerNorm bias training.
    pub fn has_plain_grad(&self) -> bool {
        self.blocks.iter().all(|b| {
            [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj]
                .iter()
                .all(|lin| lin.has_plain_grad())
                && b.ln_1.has_plain_grad()
                && b.ln_2.has_plain_grad()
        }) && self.ln_f.has_plain_grad()
    }

    /// Whether the ops' kernels apply to this model's activations (those of its embeddings).
    pub fn has_kernels(&self) -> bool {
        ops::kernels_apply(&self.wte)
    }

    /// `forward` outside autograd, with the record its backward pass takes.
    pub fn forward_saving(
        &self,
        ids: &Tensor,
        mask: &ops::KeyMask,
        ctx: &Ctx,
    ) -> candle_core::Result<(Tensor, Tape)> {
        let mut tape = Tape::default();
        let hidden = self.run(ids, mask, ctx, Some(&mut tape))?;
        Ok((hidden, tape))
    }

    /// The gradients of the LoRA matrices, pushed to `grads`, for the gradient `dhidden` of
    /// the hidden states [batch, seq, hidden] that `forward_saving` returned.
    pub fn backward(
        &self,
        tape: &Tape,
        dhidden: &Tensor,
        ctx: &Ctx,
        grads: &mut Vec<(Var, Tensor)>,
    ) -> candle_core::Result<()> {
        let c = &self.cfg;
        let Some(last) = &tape.last else {
            candle_core::bail!("gpt2 backward: the tape holds no forward pass")
        };
        let mut dx = self.ln_f.grad(last, dhidden, ctx)?;
        for (i, (blk, t)) in self.blocks.iter().zip(&tape.blocks).enumerate().rev() {
            let key = |which| ctx.dropout(c.resid_pdrop, layer_site(i, which));
            // out = mid + dropout(mlp_proj(act(c_fc(ln_2(mid)))))
            let df = ops::dropout(&dx, key(2), ctx)?;
            let dm = blk
                .mlp_proj
                .grad(&t.m, &df, true, ctx, grads)?
                .expect("asked for");
            let dh_pre = ops::activation_grad(&t.h_pre, self.act, &dm, ctx)?;
            let dln2 = blk.c_fc.grad(&t.ln2, &dh_pre, true, ctx, grads)?;
            let dmid = (&dx + blk.ln_2.grad(&t.mid, &dln2.expect("asked for"), ctx)?)?;
            // mid = x + dropout(attn_proj(attention(c_attn(ln_1(x)))))
            let da = ops::dropout(&dmid, key(1), ctx)?;
            let datt = blk.attn_proj.grad(&t.att, &da, true, ctx, grads)?;
            let (dq, dk, dv) = t.attention.grads(&datt.expect("asked for"), ctx)?;
            let dqkv = Tensor::cat(&[&dq, &dk, &dv], 2)?;
            // Block 0's input (the embeddings) needs no gradient: LoRA's alone are computed.
            let dln1 = blk.c_attn.grad(&t.ln1, &dqkv, i > 0, ctx, grads)?;
            if let Some(dln1) = dln1 {
                dx = (dmid + blk.ln_1.grad(&t.x, &dln1, ctx)?)?;
            }
        }
        Ok(())
    }
}

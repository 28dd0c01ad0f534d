//! The body of HF's GPT2ForSequenceClassification: wte + wpe, pre-LayerNorm blocks with causal
//! attention, ln_f. Conv1D weights are stored [in, out]. The `score` head lives in lib.rs.

use anyhow::Result;
use candle_core::Tensor;

use crate::activation::Act;
use crate::checkpoint::{activation, Gpt2Config, Loader};
use crate::dropout_mask::layer_site;
use crate::lora::{Linear, Norm, Part, PartMut};
use crate::ops::{self, Ctx, KeyMask};

struct Block {
    ln_1: Norm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    mlp_proj: Linear,
}

pub(crate) struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
    act: Act,
    cfg: Gpt2Config,
}

impl Gpt2 {
    pub fn load(w: &Loader, cfg: &Gpt2Config) -> Result<Self> {
        let (h, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let inner = cfg.n_inner.unwrap_or(4 * h);
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let p = format!("transformer.h.{i}");
                Ok(Block {
                    ln_1: w.norm(&format!("{p}.ln_1"), h, eps)?,
                    c_attn: w.linear(&format!("{p}.attn.c_attn"), h, 3 * h, true)?,
                    attn_proj: w.linear(&format!("{p}.attn.c_proj"), h, h, true)?,
                    ln_2: w.norm(&format!("{p}.ln_2"), h, eps)?,
                    c_fc: w.linear(&format!("{p}.mlp.c_fc"), h, inner, true)?,
                    mlp_proj: w.linear(&format!("{p}.mlp.c_proj"), inner, h, true)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            wte: w.tensor("transformer.wte.weight", &[cfg.vocab_size, h])?,
            wpe: w.tensor("transformer.wpe.weight", &[cfg.n_positions, h])?,
            blocks,
            ln_f: w.norm("transformer.ln_f", h, eps)?,
            act: activation(&cfg.activation_function, w.ckpt.dir())?,
            cfg: cfg.clone(),
        })
    }

    /// input_ids [batch, seq] u32 → hidden states [batch, seq, hidden] after ln_f.
    pub fn forward(&self, ids: &Tensor, mask: &KeyMask, ctx: &Ctx) -> candle_core::Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let (c, h) = (&self.cfg, self.cfg.n_embd);
        let x = self
            .wte
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, h))?;
        let x = x.broadcast_add(&self.wpe.narrow(0, 0, n)?)?;
        let mut x = ops::dropout(&x, ctx.dropout(c.embd_pdrop, 1), ctx)?;
        let base = if c.scale_attn_weights {
            1.0 / ((h / c.n_head) as f64).sqrt()
        } else {
            1.0
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            let scale = if c.scale_attn_by_inverse_layer_idx {
                base / (i + 1) as f64
            } else {
                base
            };
            let a = blk.ln_1.forward(&x, ctx)?;
            let qkv = blk.c_attn.forward(&a, Act::None, ctx)?;
            let (q, k, v) = (
                qkv.narrow(2, 0, h)?,
                qkv.narrow(2, h, h)?,
                qkv.narrow(2, 2 * h, h)?,
            );
            let key = ctx.dropout(c.attn_pdrop, layer_site(i, 0));
            let a = ops::attention(&q, &k, &v, c.n_head, scale, true, mask, key, ctx)?;
            let a = blk.attn_proj.forward(&a, Act::None, ctx)?;
            let a = ops::dropout(&a, ctx.dropout(c.resid_pdrop, layer_site(i, 1)), ctx)?;
            x = (x + a)?;
            let m = blk.ln_2.forward(&x, ctx)?;
            let m = blk.c_fc.forward(&m, self.act, ctx)?;
            let m = blk.mlp_proj.forward(&m, Act::None, ctx)?;
            let m = ops::dropout(&m, ctx.dropout(c.resid_pdrop, layer_site(i, 2)), ctx)?;
            x = (x + m)?;
        }
        self.ln_f.forward(&x, ctx)
    }

    pub fn parts(&self) -> Vec<Part<'_>> {
        let mut v = vec![
            Part::Tensor("transformer.wte.weight", &self.wte),
            Part::Tensor("transformer.wpe.weight", &self.wpe),
        ];
        for blk in &self.blocks {
            v.extend([
                Part::Norm(&blk.ln_1),
                Part::Linear(&blk.c_attn),
                Part::Linear(&blk.attn_proj),
                Part::Norm(&blk.ln_2),
                Part::Linear(&blk.c_fc),
                Part::Linear(&blk.mlp_proj),
            ]);
        }
        v.push(Part::Norm(&self.ln_f));
        v
    }

    pub fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        let mut v = Vec::new();
        for blk in &mut self.blocks {
            v.extend([
                PartMut::Norm(&mut blk.ln_1),
                PartMut::Linear(&mut blk.c_attn),
                PartMut::Linear(&mut blk.attn_proj),
                PartMut::Norm(&mut blk.ln_2),
                PartMut::Linear(&mut blk.c_fc),
                PartMut::Linear(&mut blk.mlp_proj),
            ]);
        }
        v.push(PartMut::Norm(&mut self.ln_f));
        v
    }
}

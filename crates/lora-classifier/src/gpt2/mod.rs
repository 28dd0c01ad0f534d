//! The body of HF's GPT2ForSequenceClassification: wte + wpe, pre-LayerNorm blocks with causal
//! attention, ln_f. Conv1D weights are stored [in, out]. The `score` head lives in
//! classifier.rs; the training step's hand-written backward pass in `grad`.

mod grad;

pub(crate) use grad::Tape;

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
        self.run(ids, mask, ctx, None)
    }

    /// `forward`, keeping in `tape` (when given) what the hand-written backward pass needs.
    fn run(
        &self,
        ids: &Tensor,
        mask: &KeyMask,
        ctx: &Ctx,
        mut tape: Option<&mut grad::Tape>,
    ) -> candle_core::Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let (c, h) = (&self.cfg, self.cfg.n_embd);
        let x = self
            .wte
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, h))?;
        let x = x.broadcast_add(&self.wpe.narrow(0, 0, n)?)?;
        let mut x = ops::dropout(&x, ctx.dropout(c.embd_pdrop, 1), ctx)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let scale = self.attention_scale(i);
            let ln1 = blk.ln_1.forward(&x, ctx)?;
            let qkv = blk.c_attn.forward(&ln1, Act::None, ctx)?;
            let (q, k, v) = (
                qkv.narrow(2, 0, h)?,
                qkv.narrow(2, h, h)?,
                qkv.narrow(2, 2 * h, h)?,
            );
            let spec = ops::AttentionSpec {
                heads: c.n_head,
                scale,
                causal: true,
                mask,
                key: ctx.dropout(c.attn_pdrop, layer_site(i, 0)),
            };
            let (att, attention) = ops::attention(&q, &k, &v, spec, ctx, tape.is_some())?;
            let a = blk.attn_proj.forward(&att, Act::None, ctx)?;
            let a = ops::dropout(&a, ctx.dropout(c.resid_pdrop, layer_site(i, 1)), ctx)?;
            let mid = (&x + a)?;
            let ln2 = blk.ln_2.forward(&mid, ctx)?;
            // The backward pass needs the activation's input: apart when saving.
            let (h_pre, m) = match tape {
                Some(_) => {
                    let h_pre = blk.c_fc.forward(&ln2, Act::None, ctx)?;
                    let m = ops::activation(&h_pre, self.act, ctx)?;
                    (Some(h_pre), m)
                }
                None => (None, blk.c_fc.forward(&ln2, self.act, ctx)?),
            };
            let f = blk.mlp_proj.forward(&m, Act::None, ctx)?;
            let f = ops::dropout(&f, ctx.dropout(c.resid_pdrop, layer_site(i, 2)), ctx)?;
            let out = (&mid + f)?;
            if let (Some(tape), Some(attention), Some(h_pre)) =
                (tape.as_deref_mut(), attention, h_pre)
            {
                tape.blocks.push(grad::BlockTape {
                    x,
                    ln1,
                    attention,
                    att,
                    mid,
                    ln2,
                    h_pre,
                    m,
                });
            }
            x = out;
        }
        let hidden = self.ln_f.forward(&x, ctx)?;
        if let Some(tape) = tape {
            tape.last = Some(x);
        }
        Ok(hidden)
    }

    /// Block i's attention scale (HF's scale_attn_weights, scale_attn_by_inverse_layer_idx).
    fn attention_scale(&self, i: usize) -> f64 {
        let c = &self.cfg;
        let base = if c.scale_attn_weights {
            1.0 / ((c.n_embd / c.n_head) as f64).sqrt()
        } else {
            1.0
        };
        if c.scale_attn_by_inverse_layer_idx {
            base / (i + 1) as f64
        } else {
            base
        }
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

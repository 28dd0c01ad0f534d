//! The body of HF's BertForSequenceClassification: embeddings, post-LayerNorm encoder layers,
//! pooler (dense + tanh on [CLS]) and the classifier dropout. The head lives in classifier.rs;
//! the training step's hand-written backward pass in `grad`.

mod grad;

pub(crate) use grad::Tape;

use anyhow::Result;
use candle_core::Tensor;

use crate::activation::Act;
use crate::checkpoint::{activation, BertConfig, Loader};
use crate::dropout_mask::layer_site;
use crate::lora::{Linear, Norm, Part, PartMut};
use crate::ops::{self, Ctx, KeyMask};

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

pub(crate) struct Bert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    pooler: Linear,
    act: Act,
    cfg: BertConfig,
}

impl Bert {
    pub fn load(w: &Loader, cfg: &BertConfig) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let e = "bert.embeddings";
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("bert.encoder.layer.{i}");
                Ok(Layer {
                    query: w.linear(&format!("{p}.attention.self.query"), h, h, false)?,
                    key: w.linear(&format!("{p}.attention.self.key"), h, h, false)?,
                    value: w.linear(&format!("{p}.attention.self.value"), h, h, false)?,
                    attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h, false)?,
                    attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    intermediate: w.linear(
                        &format!("{p}.intermediate.dense"),
                        h,
                        cfg.intermediate_size,
                        false,
                    )?,
                    output: w.linear(
                        &format!("{p}.output.dense"),
                        cfg.intermediate_size,
                        h,
                        false,
                    )?,
                    out_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            word: w.tensor(&format!("{e}.word_embeddings.weight"), &[cfg.vocab_size, h])?,
            position: w.tensor(
                &format!("{e}.position_embeddings.weight"),
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: w.tensor(
                &format!("{e}.token_type_embeddings.weight"),
                &[cfg.type_vocab_size, h],
            )?,
            emb_norm: w.norm(&format!("{e}.LayerNorm"), h, eps)?,
            layers,
            pooler: w.linear("bert.pooler.dense", h, h, false)?,
            act: activation(&cfg.hidden_act, w.ckpt.dir())?,
            cfg: cfg.clone(),
        })
    }

    /// input_ids [batch, seq] u32 → the classifier's input [batch, hidden].
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
        let c = &self.cfg;
        let x = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, c.hidden_size))?;
        // HF: (words + token type 0) + positions.
        let x = x.broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        let x = x.broadcast_add(&self.position.narrow(0, 0, n)?)?;
        let x = self.emb_norm.forward(&x, ctx)?;
        let mut x = ops::dropout(&x, ctx.dropout(c.hidden_dropout_prob, 1), ctx)?;
        let heads = c.num_attention_heads;
        let scale = 1.0 / ((c.hidden_size / heads) as f64).sqrt();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            // The classifier reads [CLS] only: the last layer computes keys and values at every
            // position and the rest for [CLS] alone, a sixth of a layer instead of a whole one.
            // Its row is the full layer's (row-wise ops; the same dropout masks, placed).
            let (xq, rows_ctx) = if i == last {
                (x.narrow(1, 0, 1)?, ctx.first_rows(1, n))
            } else {
                (x.clone(), *ctx)
            };
            let q = l.query.forward(&xq, Act::None, &rows_ctx)?;
            let k = l.key.forward(&x, Act::None, ctx)?;
            let v = l.value.forward(&x, Act::None, ctx)?;
            let spec = ops::AttentionSpec {
                heads,
                scale,
                causal: false,
                mask,
                key: ctx.dropout(c.attention_probs_dropout_prob, layer_site(i, 0)),
            };
            let (a, attention) = ops::attention(&q, &k, &v, spec, &rows_ctx, tape.is_some())?;
            let o = l.attn_out.forward(&a, Act::None, &rows_ctx)?;
            let y = l.attn_norm.forward_add(
                &o,
                ctx.dropout(c.hidden_dropout_prob, layer_site(i, 1)),
                &xq,
                &rows_ctx,
            )?;
            // The backward pass needs GELU's input: the activation apart when saving.
            let (h_pre, h) = match tape {
                Some(_) => {
                    let h_pre = l.intermediate.forward(&y, Act::None, &rows_ctx)?;
                    let h = ops::activation(&h_pre, self.act, &rows_ctx)?;
                    (Some(h_pre), h)
                }
                None => (None, l.intermediate.forward(&y, self.act, &rows_ctx)?),
            };
            let f = l.output.forward(&h, Act::None, &rows_ctx)?;
            let out = l.out_norm.forward_add(
                &f,
                ctx.dropout(c.hidden_dropout_prob, layer_site(i, 2)),
                &y,
                &rows_ctx,
            )?;
            if let (Some(tape), Some(attention), Some(h_pre)) =
                (tape.as_deref_mut(), attention, h_pre)
            {
                tape.layers.push(grad::LayerTape {
                    x,
                    xq,
                    attention,
                    a,
                    o,
                    y,
                    h_pre,
                    h,
                    f,
                    rows_ctx,
                });
            }
            x = out;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&cls, Act::None, ctx)?.tanh()?;
        let p = c.classifier_dropout.unwrap_or(c.hidden_dropout_prob);
        if let Some(tape) = tape {
            tape.cls = Some(cls);
            tape.pooled = Some(pooled.clone());
        }
        ops::dropout(&pooled, ctx.dropout(p, 2), ctx)
    }

    pub fn parts(&self) -> Vec<Part<'_>> {
        let mut v = vec![
            Part::Tensor("bert.embeddings.word_embeddings.weight", &self.word),
            Part::Tensor("bert.embeddings.position_embeddings.weight", &self.position),
            Part::Tensor(
                "bert.embeddings.token_type_embeddings.weight",
                &self.token_type,
            ),
            Part::Norm(&self.emb_norm),
        ];
        for l in &self.layers {
            v.extend([
                Part::Linear(&l.query),
                Part::Linear(&l.key),
                Part::Linear(&l.value),
                Part::Linear(&l.attn_out),
                Part::Norm(&l.attn_norm),
                Part::Linear(&l.intermediate),
                Part::Linear(&l.output),
                Part::Norm(&l.out_norm),
            ]);
        }
        v.push(Part::Linear(&self.pooler));
        v
    }

    pub fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        let mut v = vec![PartMut::Norm(&mut self.emb_norm)];
        for l in &mut self.layers {
            v.extend([
                PartMut::Linear(&mut l.query),
                PartMut::Linear(&mut l.key),
                PartMut::Linear(&mut l.value),
                PartMut::Linear(&mut l.attn_out),
                PartMut::Norm(&mut l.attn_norm),
                PartMut::Linear(&mut l.intermediate),
                PartMut::Linear(&mut l.output),
                PartMut::Norm(&mut l.out_norm),
            ]);
        }
        v.push(PartMut::Linear(&mut self.pooler));
        v
    }
}

//! Linear layers with frozen weights, alone (`FrozenLinear`, every device) or with their LoRA
//! branch (`LoraLinear`, the CPU), as ops whose backward passes compute only the gradients that
//! train.
//!
//! candle's autograd computes the gradient of both operands of every matmul and of both sides
//! of every add, needed or not: for a frozen weight that is a full extra GEMM per layer (a third
//! of a training step's FLOPs) and a bias-sized reduction. These ops hold the frozen weight, so
//! autograd never sees it.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::op::Add;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D,
};

pub(crate) use crate::cpu::{Isa, PackedLinear, Precision};

use super::gelu::activation;
use super::{apply1, apply3, Ctx};
use crate::activation::Act;
use crate::cpu;
use crate::dropout_mask::DropKey;

/// A frozen weight, stored [out, in] (nn.Linear) or [in, out] (GPT-2's Conv1D), and its bias.
#[derive(Clone, Copy)]
pub(crate) struct Frozen<'a> {
    pub w: &'a Tensor,
    pub b: Option<&'a Tensor>,
    pub conv1d: bool,
    /// `w` packed for the CPU's bf16 or int8 kernels, which then take f32 activations.
    pub packed: Option<&'a Arc<PackedLinear>>,
}

impl Frozen<'_> {
    /// (out, in)
    fn dims(&self) -> Result<(usize, usize)> {
        let (a, b) = self.w.dims2()?;
        Ok(if self.conv1d { (b, a) } else { (a, b) })
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        if x.dim(D::Minus1)? != self.dims()?.1 {
            bail!(
                "linear: input {:?} does not fit weight {:?} (conv1d: {})",
                x.dims(),
                self.w.dims(),
                self.conv1d
            )
        }
        Ok(())
    }

    /// The CPU kernels apply: f32 activations on the CPU, the weight f32 or packed.
    fn on_cpu_kernels(&self, x: &Tensor, ctx: &Ctx) -> bool {
        ctx.fused_for(&[x])
            && (self.packed.is_some() || ctx.fused_for(&[self.w]))
            && self.b.is_none_or(|b| ctx.fused_for(&[b]))
    }

    /// `FrozenLinear` applies: the CPU kernels, or weight and bias in x's dtype on x's device.
    fn fits(&self, x: &Tensor, ctx: &Ctx) -> bool {
        let same = |t: &Tensor| t.dtype() == x.dtype() && t.device().same_device(x.device());
        self.on_cpu_kernels(x, ctx) || (ctx.fused && same(self.w) && self.b.is_none_or(same))
    }

    /// dx = dy · W, the backward pass of `linear` without an activation, outside autograd: the
    /// weight is frozen.
    pub(crate) fn input_grad(&self, dy: &Tensor) -> Result<Tensor> {
        let mut dims = dy.dims().to_vec();
        *dims.last_mut().unwrap() = self.dims()?.1;
        self.op(Act::None).input_grad(dy, &Shape::from(dims))
    }

    fn op(&self, act: Act) -> FrozenLinear {
        FrozenLinear {
            w: self.w.clone(),
            packed: self.packed.cloned(),
            b: self.b.cloned(),
            conv1d: self.conv1d,
            act,
        }
    }
}

/// `act(x · Wᵀ + b)` for a contiguous x [..., in], W stored [out, in] or (`conv1d`) [in, out].
/// The activation is fused only where no gradient flows through it (the CPU in inference).
pub(crate) struct FrozenLinear {
    w: Tensor,
    /// On the CPU with f32 activations, the kernels take this in place of `w`.
    packed: Option<Arc<PackedLinear>>,
    b: Option<Tensor>,
    conv1d: bool,
    act: Act,
}

impl FrozenLinear {
    /// (out, in)
    fn dims(&self) -> (usize, usize) {
        let (a, b) = (self.w.dims()[0], self.w.dims()[1]);
        if self.conv1d {
            (b, a)
        } else {
            (a, b)
        }
    }

    fn out_shape(&self, l: &Layout) -> Shape {
        let mut dims = l.dims().to_vec();
        *dims.last_mut().unwrap() = self.dims().0;
        Shape::from(dims)
    }

    /// `f` on the CPU kernels' view of this layer (f32 data).
    fn on_cpu<R>(&self, f: impl FnOnce(cpu::Linear) -> Result<R>) -> Result<R> {
        let (n_out, n_in) = self.dims();
        let w = cpu::data(&self.w);
        let b = self.b.as_ref().map(cpu::data);
        let weight = match &self.packed {
            Some(p) => cpu::Weight::Packed(p),
            None => cpu::Weight::F32 {
                w: w.f32()?,
                conv1d: self.conv1d,
            },
        };
        f(cpu::Linear {
            w: weight,
            b: b.as_ref().map(|b| b.f32()).transpose()?,
            n_out,
            n_in,
        })
    }

    /// dx = dy · W for an input of `shape`: the CPU kernels for f32 on the CPU (packed weights
    /// too), candle's matmul elsewhere.
    fn input_grad(&self, grad: &Tensor, shape: &Shape) -> Result<Tensor> {
        let grad = grad.contiguous()?;
        if grad.device().is_cpu() && grad.dtype() == DType::F32 {
            let dx = self.on_cpu(|lin| lin.input_grad(cpu::data(&grad).f32()?))?;
            return Tensor::from_vec(dx, shape, grad.device());
        }
        let n_out = self.dims().0;
        let g = grad.reshape((grad.elem_count() / n_out, n_out))?;
        let w = if self.conv1d {
            self.w.t()?
        } else {
            self.w.clone()
        };
        g.matmul(&w)?.reshape(shape)
    }

    /// x · Wᵀ + b with candle's storage-level matmul (cuBLAS on CUDA) and `add_bias`: the
    /// other dtypes on the CPU, and other devices.
    fn matmul<S: BackendStorage>(
        &self,
        x: &S,
        xl: &Layout,
        pick: impl Fn(&Storage) -> Option<&S>,
        add_bias: impl FnOnce(S, &Layout, &S, &Layout) -> Result<S>,
    ) -> Result<(S, Shape)> {
        if self.act != Act::None {
            bail!("frozen-linear: the activation is fused on the CPU's f32 kernels only")
        }
        let (n_out, n_in) = self.dims();
        if !xl.is_contiguous() || xl.dims().last() != Some(&n_in) {
            bail!(
                "frozen-linear: input {:?} must be contiguous with last dim {n_in}",
                xl.dims()
            )
        }
        let mixed = || {
            candle_core::Error::Msg(format!(
                "{}: the input and the frozen weight are on different devices",
                self.name()
            ))
        };
        let (ws, wl) = self.w.storage_and_layout();
        let w = pick(&ws).ok_or_else(mixed)?;
        let m = xl.shape().elem_count() / n_in;
        let x2 = Layout::contiguous_with_offset((m, n_in), xl.start_offset());
        // Wᵀ as a [in, out] view of the stored weight: no transposed copy.
        let wt = if self.conv1d {
            wl.clone()
        } else {
            wl.transpose(0, 1)?
        };
        let mut y = x.matmul(w, (1, m, n_out, n_in), &x2, &wt)?;
        if let Some(b) = &self.b {
            let (bs, bl) = b.storage_and_layout();
            let bs = pick(&bs).ok_or_else(mixed)?;
            y = add_bias(y, &Layout::contiguous((m, n_out)), bs, bl)?;
        }
        Ok((y, self.out_shape(xl)))
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if let CpuStorage::F32(_) = s {
            let x = cpu::contiguous(s, l)?;
            let y = self.on_cpu(|lin| Ok(lin.forward(x, self.act)))?;
            return Ok((CpuStorage::F32(y), self.out_shape(l)));
        }
        let add_bias = |y: CpuStorage, yl: &Layout, b: &CpuStorage, bl: &Layout| {
            y.binary_impl::<Add>(b, yl, &bl.broadcast_as(yl.shape().clone())?)
        };
        fn cpu_of(s: &Storage) -> Option<&CpuStorage> {
            match s {
                Storage::Cpu(s) => Some(s),
                _ => None,
            }
        }
        self.matmul(s, l, cpu_of, add_bias)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        // One kernel, in place: candle's broadcast add runs its strided kernel at a tenth of
        // the memory bandwidth (profiled: half of bert-base's inference time on an H100).
        let add_bias = |mut y: candle_core::CudaStorage, yl: &Layout, b: &_, bl: &Layout| {
            crate::cuda::launch::bias_add(&mut y, yl, (b, bl))?;
            Ok(y)
        };
        fn cuda_of(s: &Storage) -> Option<&candle_core::CudaStorage> {
            match s {
                Storage::Cuda(s) => Some(s),
                _ => None,
            }
        }
        self.matmul(x, xl, cuda_of, add_bias)
    }

    /// dx = dy · W: the weight and bias are frozen, so no other gradient is computed.
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if self.act != Act::None {
            bail!("frozen-linear: a fused activation has no backward pass")
        }
        Ok(Some(self.input_grad(grad, x.shape())?))
    }
}

/// A frozen linear layer and its LoRA branch as one op (args x, A [r, in], B [out, r]):
/// y = x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ. Its backward pass computes dx, dA and dB with a few
/// small GEMMs and no intermediate autograd nodes. CPU kernels only; elsewhere `lora::Linear`
/// composes it from `FrozenLinear` and candle's matmuls.
pub(crate) struct LoraLinear {
    base: FrozenLinear,
    scale: f32,
    dropout: Option<DropKey>,
}

/// The gradients of a LoRA linear layer: of its input (when asked for), of A and of B.
pub(crate) struct LoraGrads {
    pub dx: Option<Tensor>,
    pub da: Tensor,
    pub db: Tensor,
}

impl LoraLinear {
    /// The CPU kernels' backward pass; layer 0's input needs no gradient (`input_grad` false):
    /// its largest GEMM is skipped.
    fn grads(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        grad: &Tensor,
        input_grad: bool,
    ) -> Result<LoraGrads> {
        let grad = grad.contiguous()?;
        let (xd, ad, bd, gd) = (cpu::data(x), cpu::data(a), cpu::data(b), cpu::data(&grad));
        let (xs, a_, b_, g) = (xd.f32()?, ad.f32()?, bd.f32()?, gd.f32()?);
        let grads = self
            .base
            .on_cpu(|lin| lin.lora_backward(xs, a_, b_, g, self.scale, self.dropout, input_grad))?;
        let dev = x.device();
        Ok(LoraGrads {
            dx: grads
                .dx
                .map(|dx| Tensor::from_vec(dx, x.shape(), dev))
                .transpose()?,
            da: Tensor::from_vec(grads.da, a.shape(), dev)?,
            db: Tensor::from_vec(grads.db, b.shape(), dev)?,
        })
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a) = (cpu::contiguous(x, xl)?, cpu::contiguous(a, al)?);
        let b = cpu::contiguous(b, bl)?;
        let y = self
            .base
            .on_cpu(|lin| Ok(lin.lora_forward(x, a, b, self.scale, self.dropout)))?;
        Ok((CpuStorage::F32(y), self.base.out_shape(xl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = self.grads(x, a, b, grad, x.track_op())?;
        Ok((grads.dx, Some(grads.da), Some(grads.db)))
    }
}

/// `act(x · Wᵀ + b)`.
pub(crate) fn linear(x: &Tensor, f: Frozen, act: Act, ctx: &Ctx) -> Result<Tensor> {
    f.check(x)?;
    if f.fits(x, ctx) {
        // The activation is fused on the CPU's kernels when no gradient flows through it.
        let fuse = f.on_cpu_kernels(x, ctx) && !x.track_op();
        let y = apply1(&x.contiguous()?, f.op(if fuse { act } else { Act::None }))?;
        return if fuse {
            Ok(y)
        } else {
            activation(&y, act, ctx)
        };
    }
    let mut dims = x.dims().to_vec();
    // CUDA's matmul takes only rows at unit stride ([CLS] rows of a batch are not).
    let x2 = x.contiguous()?.flatten_to(dims.len() - 2)?;
    // bf16 weights with f32 activations (the CPU's bf16): the reference computes in f32.
    let w = f.w.to_dtype(x.dtype())?;
    let w = if f.conv1d { w } else { w.t()? };
    let mut y = x2.matmul(&w)?;
    if let Some(b) = f.b {
        y = y.broadcast_add(b)?;
    }
    *dims.last_mut().unwrap() = f.dims()?.0;
    activation(&y.reshape(dims)?, act, ctx)
}

/// `x · Wᵀ + b + scale · (dropout(x) · Aᵀ) · Bᵀ` as one fused CPU op; None where it does not
/// apply (the caller composes it then).
pub(crate) fn lora_linear(
    x: &Tensor,
    f: Frozen,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    key: Option<DropKey>,
    ctx: &Ctx,
) -> Result<Option<Tensor>> {
    let Some(op) = fused_lora(x, f, a, b, scale, key, ctx)? else {
        return Ok(None);
    };
    let (x, a, b) = (x.contiguous()?, a.contiguous()?, b.contiguous()?);
    Ok(Some(apply3(&x, &a, &b, op)?))
}

/// The fused CPU op of [`lora_linear`] where it applies (x checked against the weight, the
/// dropout key placed for the pass).
fn fused_lora(
    x: &Tensor,
    f: Frozen,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    key: Option<DropKey>,
    ctx: &Ctx,
) -> Result<Option<LoraLinear>> {
    f.check(x)?;
    if !f.on_cpu_kernels(x, ctx) || !ctx.fused_for(&[a, b]) {
        return Ok(None);
    }
    Ok(Some(LoraLinear {
        base: f.op(Act::None),
        scale: scale as f32,
        dropout: ctx.place(key, x.dim(D::Minus1)?),
    }))
}

/// The gradients of `x · Wᵀ + b + scale · (dropout(x) · Aᵀ) · Bᵀ` for the output gradient
/// `dy`, outside autograd (the hand-written backward pass): dx when `input_grad` (the frozen
/// weight's part and the branch's), dA and dB in f32, as the LoRA matrices are. The CPU kernels
/// where they apply, else candle's ops with the branch in f32 as `lora::Lora` computes it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_linear_grad(
    x: &Tensor,
    f: Frozen,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    key: Option<DropKey>,
    dy: &Tensor,
    input_grad: bool,
    ctx: &Ctx,
) -> Result<LoraGrads> {
    if let Some(op) = fused_lora(x, f, a, b, scale, key, ctx)?.filter(|_| ctx.fused_for(&[dy])) {
        let (x, a, b) = (x.contiguous()?, a.contiguous()?, b.contiguous()?);
        return op.grads(&x, &a, &b, dy, input_grad);
    }
    let key = ctx.place(key, x.dim(D::Minus1)?);
    let (n_in, n_out) = (x.dim(D::Minus1)?, dy.dim(D::Minus1)?);
    let x2 = x.to_dtype(DType::F32)?.contiguous()?.reshape(((), n_in))?;
    let xd = super::dropout(&x2, key, ctx)?;
    let g2 = dy
        .to_dtype(DType::F32)?
        .contiguous()?
        .reshape(((), n_out))?;
    let u = xd.matmul(&a.t()?)?; // dropout(x)·Aᵀ
    let gu = (g2.matmul(b)? * scale)?; // s·dy·B
    let db = (g2.t()?.matmul(&u)? * scale)?; // s·dyᵀ·u
    let da = gu.t()?.matmul(&xd)?; // guᵀ·dropout(x)
    let dx = if input_grad {
        let branch = super::dropout(&gu.matmul(a)?, key, ctx)?;
        let branch = branch.reshape(x.shape())?.to_dtype(x.dtype())?;
        Some((f.input_grad(dy)? + branch)?)
    } else {
        None
    };
    Ok(LoraGrads { dx, da, db })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::FrozenLinear;
    use crate::activation::Act;
    use crate::test_util::max_diff;

    /// Forward and input gradient equal candle's matmul + bias (the reference) in both weight
    /// layouts, for f32 (the CPU kernels) and bf16 (candle's matmul) and an input with a batch dimension; no weight gradient exists.
    #[test]
    fn equals_the_composed_linear_and_gives_only_the_input_gradient() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::BF16] {
            for conv1d in [false, true] {
                let (n_in, n_out) = (7, 5);
                let x = Tensor::randn(0f32, 1.0, (2, 3, n_in), &dev).unwrap();
                let wshape = if conv1d { (n_in, n_out) } else { (n_out, n_in) };
                let w = Tensor::randn(0f32, 1.0, wshape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let b = Tensor::randn(0f32, 1.0, n_out, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let xv = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
                let op = FrozenLinear {
                    w: w.clone(),
                    packed: None,
                    b: Some(b.clone()),
                    conv1d,
                    act: Act::None,
                };
                let y = xv.as_tensor().apply_op1(op).unwrap();
                let wt = if conv1d { w.clone() } else { w.t().unwrap() };
                let xr = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
                let want = xr
                    .as_tensor()
                    .broadcast_matmul(&wt)
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap();
                assert_eq!(y.dims(), want.dims());
                assert!(max_diff(&y, &want) == 0.0, "{dtype:?} conv1d={conv1d}");
                // A weighted sum, so every output element's gradient differs.
                let g = Tensor::randn(0f32, 1.0, y.shape(), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let want_grads = (want * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let dx = grads.get(xv.as_tensor()).unwrap();
                let want_dx = want_grads.get(xr.as_tensor()).unwrap();
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-1 };
                assert!(max_diff(dx, want_dx) <= tol, "{dtype:?} conv1d={conv1d}");
                assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
            }
        }
    }

    /// The LoRA layer's hand-written gradients off the CPU kernels (candle's ops, what a GPU
    /// runs) equal autograd's over the composed layer: dx, dA and dB, with the LoRA dropout on.
    #[test]
    fn composed_lora_gradients_equal_autograd() {
        use crate::ops::{dropout, linear, lora_linear_grad, Ctx, Frozen};
        let dev = Device::Cpu;
        let (m, n_in, n_out, r, scale) = (6, 7, 5, 3, 2.5);
        let t = |n: usize, k: f32, shape: (usize, usize)| {
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * k).sin()).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let (w, bias) = (
            t(n_out * n_in, 0.7, (n_out, n_in)),
            t(n_out, 1.3, (1, n_out)),
        );
        let bias = bias.squeeze(0).unwrap();
        let x = Var::from_tensor(&t(m * n_in, 0.37, (m, n_in))).unwrap();
        let a = Var::from_tensor(&t(r * n_in, 0.91, (r, n_in))).unwrap();
        let b = Var::from_tensor(&t(n_out * r, 0.53, (n_out, r))).unwrap();
        let g = t(m * n_out, 0.29, (m, n_out));
        let c = Ctx {
            fused: false,
            dropout_seed: Some(3),
            detach: false,
            rows: None,
        };
        let key = c.dropout(0.3, 9);
        let f = Frozen {
            w: &w,
            b: Some(&bias),
            conv1d: false,
            packed: None,
        };
        let branch = dropout(x.as_tensor(), key, &c)
            .unwrap()
            .matmul(&a.t().unwrap())
            .unwrap()
            .matmul(&b.t().unwrap())
            .unwrap();
        let y =
            (linear(x.as_tensor(), f, Act::None, &c).unwrap() + (branch * scale).unwrap()).unwrap();
        let want = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (xd, ad, bd) = (
            x.as_detached_tensor(),
            a.as_detached_tensor(),
            b.as_detached_tensor(),
        );
        let got = lora_linear_grad(&xd, f, &ad, &bd, scale, key, &g, true, &c).unwrap();
        for (name, got, var) in [
            ("dx", got.dx.as_ref().unwrap(), &x),
            ("dA", &got.da, &a),
            ("dB", &got.db, &b),
        ] {
            let d = max_diff(got, want.get(var).unwrap());
            assert!(d < 1e-5, "{name} differs by {d}");
        }
        let without = lora_linear_grad(&xd, f, &ad, &bd, scale, None, &g, true, &c).unwrap();
        assert!(
            max_diff(&without.da, &got.da) > 1e-2,
            "the LoRA dropout is active"
        );
    }
}

//! A frozen linear layer on any backend, whose backward pass computes only the input gradient.
//!
//! candle's autograd computes the gradient of both operands of every matmul and of both sides
//! of every add, needed or not: for a frozen weight that is a full extra GEMM per layer (a third
//! of a training step's FLOPs) and a bias-sized reduction. The fused CPU kernels (`cpu`) avoid it
//! for f32 on the CPU; this op does the same on every other device and dtype (CUDA in bf16
//! above all) by calling candle's storage-level matmul (cuBLAS on CUDA) and add directly.

use candle_core::backend::BackendStorage;
use candle_core::op::Add;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `x · Wᵀ + b` with W stored [out, in] (nn.Linear) or [in, out] (GPT-2's Conv1D); x is
/// contiguous, [..., in]. W and b are held here, so autograd never sees them.
pub(crate) struct FrozenMatmul {
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub conv1d: bool,
}

impl FrozenMatmul {
    /// (out, in)
    fn dims(&self) -> (usize, usize) {
        let (a, b) = (self.w.dims()[0], self.w.dims()[1]);
        if self.conv1d {
            (b, a)
        } else {
            (a, b)
        }
    }

    fn forward<S: BackendStorage>(
        &self,
        x: &S,
        xl: &Layout,
        w: &S,
        wl: &Layout,
        b: Option<(&S, &Layout)>,
        add_bias: impl FnOnce(S, &Layout, &S, &Layout) -> Result<S>,
    ) -> Result<(S, Shape)> {
        let (n_out, n_in) = self.dims();
        if !xl.is_contiguous() || xl.dims().last() != Some(&n_in) {
            bail!(
                "frozen-matmul: input {:?} must be contiguous with last dim {n_in}",
                xl.dims()
            )
        }
        let m = xl.shape().elem_count() / n_in;
        let x2 = Layout::contiguous_with_offset((m, n_in), xl.start_offset());
        // Wᵀ as a [in, out] view of the stored weight: no transposed copy.
        let wt = if self.conv1d {
            wl.clone()
        } else {
            wl.transpose(0, 1)?
        };
        let mut y = x.matmul(w, (1, m, n_out, n_in), &x2, &wt)?;
        if let Some((b, bl)) = b {
            y = add_bias(y, &Layout::contiguous((m, n_out)), b, bl)?;
        }
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().unwrap() = n_out;
        Ok((y, Shape::from(dims)))
    }

    /// Runs `forward` on the storages of x, W and b, whichever backend they live on.
    fn forward_on<S: BackendStorage>(
        &self,
        x: &S,
        xl: &Layout,
        pick: impl Fn(&Storage) -> Option<&S>,
        add_bias: impl FnOnce(S, &Layout, &S, &Layout) -> Result<S>,
    ) -> Result<(S, Shape)> {
        let (ws, wl) = self.w.storage_and_layout();
        let w = pick(&ws).ok_or_else(|| candle_core::Error::Msg(mixed_devices()))?;
        let bias = self.b.as_ref().map(|b| b.storage_and_layout());
        let b = match &bias {
            Some((bs, bl)) => Some((
                pick(bs).ok_or_else(|| candle_core::Error::Msg(mixed_devices()))?,
                *bl,
            )),
            None => None,
        };
        self.forward(x, xl, w, wl, b, add_bias)
    }
}

fn mixed_devices() -> String {
    "frozen-matmul: the input and the frozen weight are on different devices".into()
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let add_bias = |y: CpuStorage, yl: &Layout, b: &CpuStorage, bl: &Layout| {
            y.binary_impl::<Add>(b, yl, &bl.broadcast_as(yl.shape().clone())?)
        };
        fn pick(s: &Storage) -> Option<&CpuStorage> {
            match s {
                Storage::Cpu(s) => Some(s),
                _ => None,
            }
        }
        self.forward_on(x, xl, pick, add_bias)
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
            crate::cuda::launch::bias_add(&mut y, yl, b, bl)?;
            Ok(y)
        };
        fn pick(s: &Storage) -> Option<&candle_core::CudaStorage> {
            match s {
                Storage::Cuda(s) => Some(s),
                _ => None,
            }
        }
        self.forward_on(x, xl, pick, add_bias)
    }

    /// dx = dy · W: the weight and bias are frozen, so no other gradient is computed.
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n_out = self.dims().0;
        let g = grad.reshape((grad.elem_count() / n_out, n_out))?;
        let w = if self.conv1d {
            self.w.t()?
        } else {
            self.w.clone()
        };
        Ok(Some(g.matmul(&w)?.reshape(x.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::FrozenMatmul;
    use crate::test_util::max_diff;

    /// Forward and input gradient equal candle's matmul + bias (the reference) in both weight
    /// layouts, for f32 and bf16 and an input with a batch dimension; no weight gradient exists.
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
                let op = FrozenMatmul {
                    w: w.clone(),
                    b: Some(b.clone()),
                    conv1d,
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
}

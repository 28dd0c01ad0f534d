//! The launches: typed views of the inputs, one kernel per call (`cuda` feature only). The ops
//! of `crate::ops` call these from their `cuda_fwd`; nothing here knows an op type.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Storage, Tensor};
use half::{bf16, f16};

use crate::activation::Act;
use crate::dropout_mask::DropKey;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lora_kernels.ptx"));
const MODULE: &str = "lora_classifier_kernels";
/// Threads per block of the row kernels (one block a row): rows here hold 128 to 3072 values.
const ROW_THREADS: u32 = 128;

/// An input of a launch: its storage and layout.
pub(crate) type In<'a> = (&'a CudaStorage, &'a Layout);

/// The element types the kernels are instantiated for.
trait Elem: DeviceRepr + Sized {
    const SUFFIX: &'static str;
    fn of(s: &CudaStorageSlice) -> Option<&CudaSlice<Self>>;
    fn wrap(s: CudaSlice<Self>) -> CudaStorageSlice;
}

macro_rules! elem {
    ($t:ty, $suffix:literal, $variant:ident) => {
        impl Elem for $t {
            const SUFFIX: &'static str = $suffix;
            fn of(s: &CudaStorageSlice) -> Option<&CudaSlice<Self>> {
                match s {
                    CudaStorageSlice::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn wrap(s: CudaSlice<Self>) -> CudaStorageSlice {
                CudaStorageSlice::$variant(s)
            }
        }
    };
}
elem!(f32, "f32", F32);
elem!(bf16, "bf16", BF16);
elem!(f16, "f16", F16);

/// Calls `$f::<T>(args)` for the element type T of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            other => bail!("lora-classifier CUDA kernels: unsupported dtype {other:?}"),
        }
    };
}

fn dtype(s: &CudaStorage) -> DType {
    match &s.slice {
        CudaStorageSlice::F32(_) => DType::F32,
        CudaStorageSlice::BF16(_) => DType::BF16,
        CudaStorageSlice::F16(_) => DType::F16,
        _ => DType::U8, // refused by by_dtype
    }
}

/// The contiguous elements of an input, as a view of type T.
fn view<'a, T: Elem>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let Some(slice) = T::of(&s.slice) else {
        bail!(
            "{what}: expected {} elements, got {:?}",
            T::SUFFIX,
            dtype(s)
        )
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what}: the input must be contiguous")
    };
    Ok(slice.slice(start..end))
}

/// A frozen tensor held by an op (weight, key bias), as a view of type T.
fn held<T: Elem>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(CudaView<'_, T>) -> Result<CudaStorage>,
) -> Result<CudaStorage> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        bail!("{what} is not on the CUDA device")
    };
    f(view::<T>(s, layout, what)?)
}

fn out<T: Elem>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every kernel writes all n elements before anything reads them.
    unsafe { dev.alloc::<T>(n) }
}

/// The kernel `name` for element type T, loaded (once per device) from the PTX.
macro_rules! kernel {
    ($dev:expr, $name:expr, $t:ty) => {
        $dev.get_or_load_custom_func(&format!("{}_{}", $name, <$t as Elem>::SUFFIX), MODULE, PTX)
    };
}

fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp a row, four rows a block.
fn warp_rows(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(4) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn index_limit(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        candle_core::Error::Msg(format!("{n} elements: the kernels index with 32 bits"))
    })
}

fn storage<T: Elem>(dev: &CudaDevice, s: CudaSlice<T>) -> CudaStorage {
    CudaStorage {
        slice: T::wrap(s),
        device: dev.clone(),
    }
}

pub(crate) fn dropout((s, l): In, key: DropKey) -> Result<CudaStorage> {
    fn run<T: Elem>(s: &CudaStorage, l: &Layout, key: DropKey) -> Result<CudaStorage> {
        let dev = &s.device;
        let x = view::<T>(s, l, "dropout")?;
        let n = x.len();
        let y = out::<T>(dev, n)?;
        let f = kernel!(dev, "dropout", T)?;
        let mut b = f.builder();
        b.arg(&x).arg(&y);
        candle_core::builder_arg!(b, index_limit(n)?, key.k0, key.k1, key.threshold, key.scale);
        // SAFETY: the arguments match the kernel's signature; x and y hold n elements.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(storage(dev, y))
    }
    by_dtype!(dtype(s), run(s, l, key))
}

/// p = softmax(s · scale + key_bias (+ causal mask)) over the last dim of s [batch, heads, q, n];
/// `key_bias` is [batch, n] f32 on the device.
pub(crate) fn masked_softmax(
    (s, l): In,
    key_bias: &Tensor,
    causal: bool,
    scale: f32,
) -> Result<CudaStorage> {
    fn run<T: Elem>(
        s: &CudaStorage,
        l: &Layout,
        key_bias: &Tensor,
        causal: bool,
        scale: f32,
    ) -> Result<CudaStorage> {
        let dev = &s.device;
        let (batch, heads, q, n) = l.shape().dims4()?;
        if key_bias.dims() != [batch, n] || key_bias.dtype() != DType::F32 {
            bail!(
                "masked softmax: key bias {:?} {:?} for scores {:?}",
                key_bias.dims(),
                key_bias.dtype(),
                l.dims()
            )
        }
        let x = view::<T>(s, l, "masked softmax")?;
        held::<f32>(key_bias, "the attention key bias", |bias| {
            let p = out::<T>(dev, x.len())?;
            let f = kernel!(dev, "masked_softmax", T)?;
            let mut b = f.builder();
            b.arg(&x).arg(&bias).arg(&p);
            let n_rows = batch * heads * q;
            candle_core::builder_arg!(
                b,
                index_limit(n_rows)?,
                n as i32,
                (heads * q) as i32,
                q as i32,
                causal as i32,
                scale
            );
            // SAFETY: one warp per row of n scores; bias holds batch × n values.
            unsafe { b.launch(warp_rows(n_rows)) }.w()?;
            Ok(storage(dev, p))
        })
    }
    by_dtype!(dtype(s), run(s, l, key_bias, causal, scale))
}

/// The two-input elementwise and row kernels' common check: `b` holds as many values as `a`.
fn same_len<T>(a: &CudaView<T>, b: &CudaView<T>, what: &str) -> Result<usize> {
    if a.len() != b.len() {
        bail!(
            "{what}: gradient of {} values for {} inputs",
            b.len(),
            a.len()
        )
    }
    Ok(a.len())
}

pub(crate) fn masked_softmax_backward(p: In, g: In, scale: f32) -> Result<CudaStorage> {
    fn run<T: Elem>((p, pl): In, (g, gl): In, scale: f32) -> Result<CudaStorage> {
        let dev = &p.device;
        let n = pl.dims()[pl.dims().len() - 1];
        let (pv, gv) = (
            view::<T>(p, pl, "softmax probabilities")?,
            view::<T>(g, gl, "softmax gradient")?,
        );
        let len = same_len(&pv, &gv, "masked softmax backward")?;
        let ds = out::<T>(dev, len)?;
        let f = kernel!(dev, "masked_softmax_backward", T)?;
        let mut b = f.builder();
        b.arg(&pv).arg(&gv).arg(&ds);
        let n_rows = len / n;
        candle_core::builder_arg!(b, index_limit(n_rows)?, n as i32, scale);
        // SAFETY: one warp per row of n values in each buffer.
        unsafe { b.launch(warp_rows(n_rows)) }.w()?;
        Ok(storage(dev, ds))
    }
    by_dtype!(dtype(p.0), run(p, g, scale))
}

/// LayerNorm over rows of `w`'s length of dropout(x) + r (or x); `w` is held by the op.
#[derive(Clone, Copy)]
pub(crate) struct Norm<'a> {
    pub w: &'a Tensor,
    pub eps: f32,
    pub dropout: Option<DropKey>,
}

pub(crate) fn layer_norm(x: In, r: Option<In>, bias: In, norm: Norm) -> Result<CudaStorage> {
    by_dtype!(dtype(x.0), norm_rows("layer_norm", x, r, bias, norm))
}

/// The gradient of the LayerNorm input (= of the residual) for the output gradient `g`.
pub(crate) fn layer_norm_backward(x: In, r: Option<In>, g: In, norm: Norm) -> Result<CudaStorage> {
    by_dtype!(dtype(x.0), norm_rows("layer_norm_backward", x, r, g, norm))
}

/// The LayerNorm kernels, forward and backward, whose arguments are alike: (x, r, w, z, out,
/// h, has_r, dropout…, eps) with z the bias or the output gradient.
fn norm_rows<T: Elem>(
    name: &str,
    (x, xl): In,
    r: Option<In>,
    (z, zl): In,
    norm: Norm,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let h = norm.w.elem_count();
    if xl.dims().last() != Some(&h) {
        bail!(
            "cuda {name}: input {:?} does not fit weight of {h}",
            xl.dims()
        )
    }
    if let Some((_, rl)) = r {
        if rl.dims() != xl.dims() {
            bail!(
                "cuda {name}: residual {:?} vs input {:?}",
                rl.dims(),
                xl.dims()
            )
        }
    }
    let xv = view::<T>(x, xl, "layer norm input")?;
    let rv = r
        .map(|(r, rl)| view::<T>(r, rl, "layer norm residual"))
        .transpose()?;
    let zv = view::<T>(z, zl, name)?;
    let n = xv.len();
    if name == "layer_norm_backward" {
        same_len(&xv, &zv, name)?;
    }
    index_limit(n)?;
    held::<T>(norm.w, "the layer norm weight", |wv| {
        let y = out::<T>(dev, n)?;
        let f = kernel!(dev, name, T)?;
        let mut b = f.builder();
        // Without a residual, x stands in for it (has_r = 0: never read).
        b.arg(&xv)
            .arg(rv.as_ref().unwrap_or(&xv))
            .arg(&wv)
            .arg(&zv)
            .arg(&y);
        let (has_drop, k0, k1, threshold, scale) = match norm.dropout {
            Some(k) => (1, k.k0, k.k1, k.threshold, k.scale),
            None => (0, 0, 0, 0, 1.0),
        };
        candle_core::builder_arg!(
            b,
            h as i32,
            rv.is_some() as i32,
            has_drop,
            k0,
            k1,
            threshold,
            scale,
            norm.eps
        );
        // SAFETY: one block per row of h values; w (and the bias) hold h values.
        unsafe { b.launch(rows(n / h)) }.w()?;
        Ok(storage(dev, y))
    })
}

/// y += b broadcast over y's rows, in place (y: a matmul's fresh output, [rows, n]).
pub(crate) fn bias_add(y: &mut CudaStorage, yl: &Layout, bias: In) -> Result<()> {
    fn run<T: Elem>(y: &mut CudaStorage, yl: &Layout, (bias, bl): In) -> Result<()> {
        let dev = y.device.clone();
        let bv = view::<T>(bias, bl, "linear bias")?;
        let n = bv.len();
        let total = yl.shape().elem_count();
        if n == 0 || yl.dims().last() != Some(&n) {
            bail!("bias add: bias of {n} for output {:?}", yl.dims())
        }
        let yv = view::<T>(y, yl, "linear output")?;
        let f = kernel!(dev, "bias_add", T)?;
        let mut b = f.builder();
        b.arg(&yv).arg(&bv);
        candle_core::builder_arg!(b, index_limit(total)?, n as u32);
        // SAFETY: y holds total elements, b holds n; the kernel writes y in place.
        unsafe { b.launch(elementwise(total)) }.w()?;
        Ok(())
    }
    by_dtype!(dtype(y), run(y, yl, bias))
}

/// [B, X, Y, D] → [B, Y, X, D].
pub(crate) fn swap_middle((x, l): In) -> Result<CudaStorage> {
    fn run<T: Elem>(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
        let dev = &x.device;
        let (nb, nx, ny, d) = l.shape().dims4()?;
        let xv = view::<T>(x, l, "swap-middle input")?;
        let n = xv.len();
        let y = out::<T>(dev, n)?;
        let f = kernel!(dev, "swap_middle", T)?;
        let mut b = f.builder();
        b.arg(&xv).arg(&y);
        index_limit(n)?;
        candle_core::builder_arg!(b, nb as u32, nx as u32, ny as u32, d as u32);
        // SAFETY: x and y hold nb·nx·ny·d elements.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(storage(dev, y))
    }
    by_dtype!(dtype(x), run(x, l))
}

fn tanh_flag(act: Act) -> Result<i32> {
    match act {
        Act::GeluErf => Ok(0),
        Act::GeluTanh => Ok(1),
        Act::None => bail!("cuda gelu: no activation to apply"),
    }
}

/// GELU, or with `grad` its backward pass: the kernels `gelu` (x, y) and `gelu_backward`
/// (x, g, dx), both elementwise with (n, tanh).
pub(crate) fn gelu((x, xl): In, grad: Option<In>, act: Act) -> Result<CudaStorage> {
    fn run<T: Elem>(
        x: &CudaStorage,
        xl: &Layout,
        grad: Option<In>,
        act: Act,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let xv = view::<T>(x, xl, "gelu input")?;
        let gv = grad
            .map(|(g, gl)| view::<T>(g, gl, "gelu gradient"))
            .transpose()?;
        let n = match &gv {
            Some(gv) => same_len(&xv, gv, "gelu backward")?,
            None => xv.len(),
        };
        let y = out::<T>(dev, n)?;
        let name = if gv.is_some() {
            "gelu_backward"
        } else {
            "gelu"
        };
        let f = kernel!(dev, name, T)?;
        let mut b = f.builder();
        b.arg(&xv);
        if let Some(gv) = &gv {
            b.arg(gv);
        }
        b.arg(&y);
        candle_core::builder_arg!(b, index_limit(n)?, tanh_flag(act)?);
        // SAFETY: x, y (and g) hold n elements; the arguments match the kernel named.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(storage(dev, y))
    }
    by_dtype!(dtype(x), run(x, xl, grad, act))
}

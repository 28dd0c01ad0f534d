//! The launches: typed views of the inputs, one kernel per call (`cuda` feature only).

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Storage};
use half::{bf16, f16};

use super::{LayerNorm, MaskedSoftmax};
use crate::activation::Act;
use crate::dropout_mask::DropKey;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lora_kernels.ptx"));
const MODULE: &str = "lora_classifier_kernels";
/// Threads per block of the row kernels (one block a row): rows here hold 128 to 3072 values.
const ROW_THREADS: u32 = 128;

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
    t: &candle_core::Tensor,
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
    ($dev:expr, $name:literal, $t:ty) => {
        $dev.get_or_load_custom_func(
            &format!(concat!($name, "_{}"), <$t as Elem>::SUFFIX),
            MODULE,
            PTX,
        )
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

pub(super) fn dropout(s: &CudaStorage, l: &Layout, key: &DropKey) -> Result<CudaStorage> {
    fn run<T: Elem>(s: &CudaStorage, l: &Layout, key: &DropKey) -> Result<CudaStorage> {
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

pub(super) fn masked_softmax(
    s: &CudaStorage,
    l: &Layout,
    op: &MaskedSoftmax,
) -> Result<CudaStorage> {
    fn run<T: Elem>(s: &CudaStorage, l: &Layout, op: &MaskedSoftmax) -> Result<CudaStorage> {
        let dev = &s.device;
        let (batch, heads, q, n) = l.shape().dims4()?;
        if op.key_bias.dims() != [batch, n] || op.key_bias.dtype() != DType::F32 {
            bail!(
                "masked softmax: key bias {:?} {:?} for scores {:?}",
                op.key_bias.dims(),
                op.key_bias.dtype(),
                l.dims()
            )
        }
        let x = view::<T>(s, l, "masked softmax")?;
        held::<f32>(&op.key_bias, "the attention key bias", |bias| {
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
                op.causal as i32,
                op.scale
            );
            // SAFETY: one warp per row of n scores; bias holds batch × n values.
            unsafe { b.launch(warp_rows(n_rows)) }.w()?;
            Ok(storage(dev, p))
        })
    }
    by_dtype!(dtype(s), run(s, l, op))
}

pub(super) fn masked_softmax_backward(
    p: &CudaStorage,
    pl: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    scale: f32,
) -> Result<CudaStorage> {
    fn run<T: Elem>(
        p: &CudaStorage,
        pl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
        scale: f32,
    ) -> Result<CudaStorage> {
        let dev = &p.device;
        if pl.dims() != gl.dims() {
            bail!(
                "masked softmax backward: probabilities {:?} vs gradient {:?}",
                pl.dims(),
                gl.dims()
            )
        }
        let n = pl.dims()[pl.dims().len() - 1];
        let (pv, gv) = (
            view::<T>(p, pl, "softmax probabilities")?,
            view::<T>(g, gl, "softmax gradient")?,
        );
        let ds = out::<T>(dev, pv.len())?;
        let f = kernel!(dev, "masked_softmax_backward", T)?;
        let mut b = f.builder();
        b.arg(&pv).arg(&gv).arg(&ds);
        let n_rows = pv.len() / n;
        candle_core::builder_arg!(b, index_limit(n_rows)?, n as i32, scale);
        // SAFETY: one warp per row of n values in each buffer.
        unsafe { b.launch(warp_rows(n_rows)) }.w()?;
        Ok(storage(dev, ds))
    }
    by_dtype!(dtype(p), run(p, pl, g, gl, scale))
}

/// The dropout arguments of the row kernels: (has_drop, k0, k1, threshold, scale).
fn drop_args(key: Option<DropKey>) -> (i32, u32, u32, u32, f32) {
    match key {
        Some(k) => (1, k.k0, k.k1, k.threshold, k.scale),
        None => (0, 0, 0, 0, 1.0),
    }
}

pub(super) fn layer_norm(
    op: &LayerNorm,
    x: &CudaStorage,
    xl: &Layout,
    r: Option<(&CudaStorage, &Layout)>,
    bias: &CudaStorage,
    bl: &Layout,
) -> Result<CudaStorage> {
    fn run<T: Elem>(
        op: &LayerNorm,
        x: &CudaStorage,
        xl: &Layout,
        r: Option<(&CudaStorage, &Layout)>,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let h = op.w.elem_count();
        let xv = view::<T>(x, xl, "layer norm input")?;
        let rv = r
            .map(|(r, rl)| view::<T>(r, rl, "layer norm residual"))
            .transpose()?;
        let bv = view::<T>(bias, bl, "layer norm bias")?;
        let n = xv.len();
        index_limit(n)?;
        held::<T>(&op.w, "the layer norm weight", |wv| {
            let y = out::<T>(dev, n)?;
            let f = kernel!(dev, "layer_norm", T)?;
            let mut b = f.builder();
            // Without a residual, x stands in for it (has_r = 0: never read).
            b.arg(&xv)
                .arg(rv.as_ref().unwrap_or(&xv))
                .arg(&wv)
                .arg(&bv)
                .arg(&y);
            let (has_drop, k0, k1, threshold, scale) = drop_args(op.dropout);
            candle_core::builder_arg!(
                b,
                h as i32,
                rv.is_some() as i32,
                has_drop,
                k0,
                k1,
                threshold,
                scale,
                op.eps
            );
            // SAFETY: one block per row of h values; w and b hold h values.
            unsafe { b.launch(rows(n / h)) }.w()?;
            Ok(storage(dev, y))
        })
    }
    by_dtype!(dtype(x), run(op, x, xl, r, bias, bl))
}

pub(super) fn layer_norm_backward(
    op: &LayerNorm,
    x: &CudaStorage,
    xl: &Layout,
    r: Option<(&CudaStorage, &Layout)>,
    g: &CudaStorage,
    gl: &Layout,
) -> Result<CudaStorage> {
    fn run<T: Elem>(
        op: &LayerNorm,
        x: &CudaStorage,
        xl: &Layout,
        r: Option<(&CudaStorage, &Layout)>,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let h = op.w.elem_count();
        let xv = view::<T>(x, xl, "layer norm input")?;
        let rv = r
            .map(|(r, rl)| view::<T>(r, rl, "layer norm residual"))
            .transpose()?;
        let gv = view::<T>(g, gl, "layer norm gradient")?;
        let n = xv.len();
        if gv.len() != n {
            bail!(
                "layer norm backward: gradient of {} values for {n} inputs",
                gv.len()
            )
        }
        index_limit(n)?;
        held::<T>(&op.w, "the layer norm weight", |wv| {
            let dx = out::<T>(dev, n)?;
            let f = kernel!(dev, "layer_norm_backward", T)?;
            let mut b = f.builder();
            b.arg(&xv)
                .arg(rv.as_ref().unwrap_or(&xv))
                .arg(&wv)
                .arg(&gv)
                .arg(&dx);
            let (has_drop, k0, k1, threshold, scale) = drop_args(op.dropout);
            candle_core::builder_arg!(
                b,
                h as i32,
                rv.is_some() as i32,
                has_drop,
                k0,
                k1,
                threshold,
                scale,
                op.eps
            );
            // SAFETY: one block per row of h values; w holds h values.
            unsafe { b.launch(rows(n / h)) }.w()?;
            Ok(storage(dev, dx))
        })
    }
    by_dtype!(dtype(x), run(op, x, xl, r, g, gl))
}

/// y += b broadcast over y's rows, in place (y: a matmul's fresh output, [rows, n]).
pub(crate) fn bias_add(
    y: &mut CudaStorage,
    yl: &Layout,
    bias: &CudaStorage,
    bl: &Layout,
) -> Result<()> {
    fn run<T: Elem>(
        y: &mut CudaStorage,
        yl: &Layout,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> Result<()> {
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
    by_dtype!(dtype(y), run(y, yl, bias, bl))
}

/// [B, X, Y, D] → [B, Y, X, D].
pub(super) fn swap_middle(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
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

pub(super) fn gelu(x: &CudaStorage, l: &Layout, act: Act) -> Result<CudaStorage> {
    fn run<T: Elem>(x: &CudaStorage, l: &Layout, act: Act) -> Result<CudaStorage> {
        let dev = &x.device;
        let xv = view::<T>(x, l, "gelu input")?;
        let n = xv.len();
        let y = out::<T>(dev, n)?;
        let f = kernel!(dev, "gelu", T)?;
        let mut b = f.builder();
        b.arg(&xv).arg(&y);
        candle_core::builder_arg!(b, index_limit(n)?, tanh_flag(act)?);
        // SAFETY: x and y hold n elements.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(storage(dev, y))
    }
    by_dtype!(dtype(x), run(x, l, act))
}

pub(super) fn gelu_backward(
    x: &CudaStorage,
    xl: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    act: Act,
) -> Result<CudaStorage> {
    fn run<T: Elem>(
        x: &CudaStorage,
        xl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
        act: Act,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let (xv, gv) = (
            view::<T>(x, xl, "gelu input")?,
            view::<T>(g, gl, "gelu gradient")?,
        );
        let n = xv.len();
        if gv.len() != n {
            bail!(
                "gelu backward: gradient of {} values for {n} inputs",
                gv.len()
            )
        }
        let dx = out::<T>(dev, n)?;
        let f = kernel!(dev, "gelu_backward", T)?;
        let mut b = f.builder();
        b.arg(&xv).arg(&gv).arg(&dx);
        candle_core::builder_arg!(b, index_limit(n)?, tanh_flag(act)?);
        // SAFETY: x, g and dx hold n elements.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(storage(dev, dx))
    }
    by_dtype!(dtype(x), run(x, xl, g, gl, act))
}

//! The activation a linear layer applies (and the fused kernels of every device fuse into it):
//! none, or GELU in its exact (erf) or tanh form, as the checkpoint's config names it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    None,
    GeluErf,
    GeluTanh,
}

// The AdamW update of one f32 parameter, its exp_avg and exp_avg_sq in one pass, as
// torch.optim.AdamW's single-tensor step (and optim.rs's composed candle ops) computes it: every
// operation rounded to f32 in the same order, with no fused multiply-add, so the result equals
// the composed ops' bit for bit, in one launch instead of a dozen.
//
// Compiled to PTX by build.rs (nvcc --ptx) when the `cuda` feature is on; loaded by cuda/mod.rs.

#include <stdint.h>

extern "C" __global__ void adamw_f32(float *p, const float *g, float *m, float *v, uint32_t n,
                                     float decay, float lerp_w, int lerp_from_end, float beta2,
                                     float one_minus_beta2, float inv_bc2_sqrt, float eps,
                                     float neg_step_size) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float gi = g[i];
        // param.mul_(1 - lr * weight_decay)
        const float pi = __fmul_rn(p[i], decay);
        // exp_avg.lerp_(grad, w = 1 - beta1): self + w·(end − self) for w < 0.5, else
        // end − (1 − w)·(end − self); lerp_w is w or 1 − w accordingly (computed in f64)
        const float d = __fsub_rn(gi, m[i]);
        const float mi = lerp_from_end ? __fsub_rn(gi, __fmul_rn(d, lerp_w))
                                       : __fadd_rn(m[i], __fmul_rn(d, lerp_w));
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        const float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(gi, one_minus_beta2), gi));
        // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_bc2_sqrt), eps);
        // param.addcdiv_(exp_avg, denom, value=-step_size)
        p[i] = __fadd_rn(pi, __fmul_rn(__fdiv_rn(mi, denom), neg_step_size));
        m[i] = mi;
        v[i] = vi;
    }
}

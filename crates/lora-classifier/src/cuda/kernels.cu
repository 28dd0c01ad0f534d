// CUDA kernels for the steps that candle would otherwise compose from many launches (or run
// through its generic strided kernels): dropout (with the CPU's counter-based masks, bit for
// bit), the attention's scaled, masked softmax, the residual + LayerNorm of BERT's blocks and
// GELU, each with its backward pass; a linear layer's bias; the attention heads' transposes. Every kernel
// reads and writes one element type T (f32, bf16 or f16) and computes in f32.
//
// Compiled to PTX by build.rs (nvcc --ptx) when the `cuda` feature is on; loaded by cuda/launch.rs.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// Added to the attention scores of masked keys, as ops::MASKED on the CPU.
#define MASKED (-1e30f)

// Chris Wellons' lowbias32, as cpu::hash32.
__device__ __forceinline__ uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    return x ^ (x >> 16);
}

// The dropout factor of element i: 0 or 1/(1-p), as cpu::DropKey::factor.
struct DropKey {
    uint32_t k0, k1, threshold;
    float scale;
};

__device__ __forceinline__ float drop_factor(uint32_t i, DropKey k) {
    return hash32(hash32(i ^ k.k0) ^ k.k1) >= k.threshold ? k.scale : 0.0f;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. The leading barrier lets a block call them back to back.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) total = v;
    }
    __syncthreads();
    return total;
}

__device__ float block_max(float v) {
    __shared__ float part[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : -INFINITY;
        v = warp_max(v);
        if (lane == 0) total = v;
    }
    __syncthreads();
    return total;
}

// ---- dropout: y = x · factor(i) ------------------------------------------------------------

template <typename T>
__device__ void dropout(const T *x, T *y, uint32_t n, DropKey k) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = from_f<T>(to_f(x[i]) * drop_factor(i, k));
}

// ---- attention: p = softmax(s · scale + key_bias (+ causal mask)) over the last dim ---------
// s, p: [batch, heads, q_len, n] rows; key_bias: [batch, n] f32 (0 or MASKED). One warp a row
// (rows hold the keys of one query: at most a model's positions), reductions by shuffles.

template <typename T>
__device__ __forceinline__ float score(const T *s, const float *bias, int j, int qi, int causal,
                                       float scale) {
    float v = to_f(s[j]) * scale + bias[j];
    if (causal && j > qi) v += MASKED;
    return v;
}

__device__ __forceinline__ size_t warp_row() {
    return (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
}

template <typename T>
__device__ void masked_softmax(const T *s, const float *key_bias, T *p, size_t rows, int n,
                               int rows_per_batch, int q_len, int causal, float scale) {
    const size_t row = warp_row();
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const int qi = (int)(row % q_len);
    const float *bias = key_bias + (row / rows_per_batch) * n;
    const T *sr = s + row * n;
    T *pr = p + row * n;
    float mx = -INFINITY;
    for (int j = lane; j < n; j += 32) mx = fmaxf(mx, score(sr, bias, j, qi, causal, scale));
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < n; j += 32) sum += expf(score(sr, bias, j, qi, causal, scale) - mx);
    sum = warp_sum(sum);
    for (int j = lane; j < n; j += 32)
        pr[j] = from_f<T>(expf(score(sr, bias, j, qi, causal, scale) - mx) / sum);
}

// ds = scale · p ⊙ (g − Σ g⊙p), per row.
template <typename T>
__device__ void masked_softmax_backward(const T *p, const T *g, T *ds, size_t rows, int n,
                                        float scale) {
    const size_t row = warp_row();
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const T *pr = p + row * n, *gr = g + row * n;
    T *dr = ds + row * n;
    float dot = 0.0f;
    for (int j = lane; j < n; j += 32) dot += to_f(pr[j]) * to_f(gr[j]);
    dot = warp_sum(dot);
    for (int j = lane; j < n; j += 32)
        dr[j] = from_f<T>(scale * to_f(pr[j]) * (to_f(gr[j]) - dot));
}

// ---- y[i] += b[i mod n]: a linear layer's bias, in place on the matmul's output --------------

template <typename T>
__device__ void bias_add(T *y, const T *b, uint32_t total, uint32_t n) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x)
        y[i] = from_f<T>(to_f(y[i]) + to_f(b[i % n]));
}

// ---- [B, X, Y, D] → [B, Y, X, D]: attention heads split from and merged into the hidden dim --

template <typename T>
__device__ void swap_middle(const T *x, T *y, uint32_t nb, uint32_t nx, uint32_t ny, uint32_t d) {
    const uint32_t total = nb * nx * ny * d;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        // i indexes the output [B, Y, X, D].
        const uint32_t e = i % d, r = i / d;
        const uint32_t xi = r % nx, r2 = r / nx;
        const uint32_t yi = r2 % ny, bi = r2 / ny;
        y[i] = x[(((size_t)bi * nx + xi) * ny + yi) * d + e];
    }
}

// ---- LayerNorm(dropout(x) + r) over rows of h, frozen weight w, bias b -----------------------
// One block a row; the input row is recomputed rather than stored.

template <typename T>
__device__ __forceinline__ float ln_input(const T *x, const T *r, size_t i, int has_r, int has_drop,
                                          DropKey k) {
    float v = to_f(x[i]);
    if (has_drop) v *= drop_factor((uint32_t)i, k);
    if (has_r) v += to_f(r[i]);
    return v;
}

template <typename T>
__device__ void row_stats(const T *x, const T *r, size_t base, int h, int has_r, int has_drop,
                          DropKey k, float eps, float *mean, float *rstd) {
    float sum = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) sum += ln_input(x, r, base + j, has_r, has_drop, k);
    const float m = block_sum(sum) / h;
    float var = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float d = ln_input(x, r, base + j, has_r, has_drop, k) - m;
        var += d * d;
    }
    *mean = m;
    *rstd = 1.0f / sqrtf(block_sum(var) / h + eps);
}

template <typename T>
__device__ void layer_norm(const T *x, const T *r, const T *w, const T *b, T *y, int h, int has_r,
                           int has_drop, DropKey k, float eps) {
    const size_t base = (size_t)blockIdx.x * h;
    float mean, rstd;
    row_stats(x, r, base, h, has_r, has_drop, k, eps, &mean, &rstd);
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float v = ln_input(x, r, base + j, has_r, has_drop, k);
        y[base + j] = from_f<T>((v - mean) * rstd * to_f(w[j]) + to_f(b[j]));
    }
}

// The gradient of the LayerNorm input: rstd · (g⊙w − mean(g⊙w) − x̂ · mean(g⊙w⊙x̂)).
template <typename T>
__device__ void layer_norm_backward(const T *x, const T *r, const T *w, const T *g, T *dx, int h,
                                    int has_r, int has_drop, DropKey k, float eps) {
    const size_t base = (size_t)blockIdx.x * h;
    float mean, rstd;
    row_stats(x, r, base, h, has_r, has_drop, k, eps, &mean, &rstd);
    float a = 0.0f, c = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float gw = to_f(g[base + j]) * to_f(w[j]);
        const float xhat = (ln_input(x, r, base + j, has_r, has_drop, k) - mean) * rstd;
        a += gw;
        c += gw * xhat;
    }
    a = block_sum(a) / h;
    c = block_sum(c) / h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float gw = to_f(g[base + j]) * to_f(w[j]);
        const float xhat = (ln_input(x, r, base + j, has_r, has_drop, k) - mean) * rstd;
        dx[base + j] = from_f<T>(rstd * (gw - a - xhat * c));
    }
}

// ---- GELU: exact (erf) or the tanh approximation (GPT-2's gelu_new) --------------------------

#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float gelu(float x, int tanh_approx) {
    if (tanh_approx)
        return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.0f + erff(x * INV_SQRT_2));
}

__device__ __forceinline__ float gelu_grad(float x, int tanh_approx) {
    if (tanh_approx) {
        const float t = tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) +
               0.5f * x * (1.0f - t * t) * SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
    }
    return 0.5f * (1.0f + erff(x * INV_SQRT_2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
}

template <typename T>
__device__ void gelu_forward(const T *x, T *y, uint32_t n, int tanh_approx) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = from_f<T>(gelu(to_f(x[i]), tanh_approx));
}

template <typename T>
__device__ void gelu_backward(const T *x, const T *g, T *dx, uint32_t n, int tanh_approx) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        dx[i] = from_f<T>(to_f(g[i]) * gelu_grad(to_f(x[i]), tanh_approx));
}

// ---- entry points, one per element type -----------------------------------------------------

#define KERNELS(T, SUFFIX)                                                                          \
    extern "C" __global__ void dropout_##SUFFIX(const T *x, T *y, uint32_t n, uint32_t k0,          \
                                                uint32_t k1, uint32_t threshold, float scale) {     \
        dropout<T>(x, y, n, DropKey{k0, k1, threshold, scale});                                     \
    }                                                                                               \
    extern "C" __global__ void masked_softmax_##SUFFIX(const T *s, const float *key_bias, T *p,     \
                                                       uint32_t rows, int n, int rows_per_batch,    \
                                                       int q_len, int causal, float scale) {        \
        masked_softmax<T>(s, key_bias, p, rows, n, rows_per_batch, q_len, causal, scale);           \
    }                                                                                               \
    extern "C" __global__ void masked_softmax_backward_##SUFFIX(const T *p, const T *g, T *ds,     \
                                                                uint32_t rows, int n, float scale) {\
        masked_softmax_backward<T>(p, g, ds, rows, n, scale);                                       \
    }                                                                                               \
    extern "C" __global__ void bias_add_##SUFFIX(T *y, const T *b, uint32_t total, uint32_t n) {   \
        bias_add<T>(y, b, total, n);                                                                \
    }                                                                                               \
    extern "C" __global__ void swap_middle_##SUFFIX(const T *x, T *y, uint32_t nb, uint32_t nx,    \
                                                    uint32_t ny, uint32_t d) {                      \
        swap_middle<T>(x, y, nb, nx, ny, d);                                                        \
    }                                                                                               \
    extern "C" __global__ void layer_norm_##SUFFIX(                                                 \
        const T *x, const T *r, const T *w, const T *b, T *y, int h, int has_r, int has_drop,       \
        uint32_t k0, uint32_t k1, uint32_t threshold, float scale, float eps) {                     \
        layer_norm<T>(x, r, w, b, y, h, has_r, has_drop, DropKey{k0, k1, threshold, scale}, eps);   \
    }                                                                                               \
    extern "C" __global__ void layer_norm_backward_##SUFFIX(                                        \
        const T *x, const T *r, const T *w, const T *g, T *dx, int h, int has_r, int has_drop,      \
        uint32_t k0, uint32_t k1, uint32_t threshold, float scale, float eps) {                     \
        layer_norm_backward<T>(x, r, w, g, dx, h, has_r, has_drop,                                  \
                               DropKey{k0, k1, threshold, scale}, eps);                             \
    }                                                                                               \
    extern "C" __global__ void gelu_##SUFFIX(const T *x, T *y, uint32_t n, int tanh_approx) {       \
        gelu_forward<T>(x, y, n, tanh_approx);                                                      \
    }                                                                                               \
    extern "C" __global__ void gelu_backward_##SUFFIX(const T *x, const T *g, T *dx, uint32_t n,    \
                                                      int tanh_approx) {                            \
        gelu_backward<T>(x, g, dx, n, tanh_approx);                                                 \
    }

KERNELS(float, f32)
KERNELS(__nv_bfloat16, bf16)
KERNELS(__half, f16)

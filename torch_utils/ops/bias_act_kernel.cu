// bias_act CUDA kernel: fused bias + activation + gain + clamp, and its first and second
// derivatives, elementwise over a dense tensor in storage order.
//
// Semantics: stylegan2-arithmetic.md §2. Steps in fixed order: bias, activation, gain, clamp.
// CUDA numerics (§2, §9): every element is computed in fp32 from the widened inputs and rounded
// once to the tensor dtype; the clamp gradient passes only where |y| < clamp strictly;
// softplus is the identity above 80.
//
// Derivatives (the "gradient from" column of §2's table): with s = x + b the pre-activation and
// v = y / gain the activation value recovered from the saved output y (0 when gain == 0),
//   relu      f' = [v > 0]                       f'' = 0
//   lrelu     f' = v > 0 ? 1 : alpha              f'' = 0
//   tanh      f' = 1 - v^2                        f'' = -2 v (1 - v^2)
//   sigmoid   f' = v (1 - v)                      f'' = v (1 - v)(1 - 2v)
//   elu       f' = v >= 0 ? 1 : v + 1             f'' = v >= 0 ? 0 : v + 1          (e^s = v + 1)
//   selu      f' = v >= 0 ? L : v + L*A           f'' = v >= 0 ? 0 : v + L*A        (L*A*e^s = v + L*A)
//   softplus  f' = 1 - e^-v                       f'' = (1 - e^-v) e^-v            (sigmoid(s) = 1 - e^-v)
//   swish     from s, with q = sigmoid(s):  f' = q (1 + s (1 - q)),  f'' = q (1 - q)(2 + s (1 - 2q))
//   linear    f' = 1, f'' = 0
// Mode kBiasActGrad returns g * gain * f' and kBiasActGrad2 returns g * dy * gain * f'', both
// zeroed where a clamp is set and |y| < clamp fails.
//
// Only CUDA headers are included. With -DDEGAN_HOST_EMULATION the file also exports a host
// function that evaluates the same element code on the CPU (tests/test_cuda_ops.py).

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <math.h>
#include <stdint.h>

#include "kernels.h"
#include "elem.cuh"

namespace degan_ops {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;

constexpr float kSeluLambda = 1.0507009873554804934193349852946f;
constexpr float kSeluAlpha = 1.6732632423543772848170429916717f;
constexpr float kSoftplusLinear = 80.f;  // softplus(s) = s above this (CUDA threshold, §2)

__host__ __device__ __forceinline__ float sigmoidf_(float s) { return 1.f / (1.f + expf(-s)); }

// f(s)
template <int A>
__host__ __device__ __forceinline__ float act_value(float s, float alpha) {
    if (A == kActRelu) return (s < 0.f) ? 0.f : s;  // NaN passes through
    if (A == kActLrelu) return (s > 0.f) ? s : s * alpha;
    if (A == kActTanh) return tanhf(s);
    if (A == kActSigmoid) return sigmoidf_(s);
    if (A == kActElu) return (s >= 0.f) ? s : expm1f(s);
    if (A == kActSelu) return (s >= 0.f) ? kSeluLambda * s : (kSeluLambda * kSeluAlpha) * expm1f(s);
    if (A == kActSoftplus) return (s > kSoftplusLinear) ? s : log1pf(expf(s));
    if (A == kActSwish) return s * sigmoidf_(s);
    return s;  // linear
}

// f'(s), from s (swish) or from the activation value v (the others).
template <int A>
__host__ __device__ __forceinline__ float act_grad(float s, float v, float alpha) {
    if (A == kActRelu) return (v > 0.f) ? 1.f : 0.f;
    if (A == kActLrelu) return (v > 0.f) ? 1.f : alpha;
    if (A == kActTanh) return 1.f - v * v;
    if (A == kActSigmoid) return v * (1.f - v);
    if (A == kActElu) return (v >= 0.f) ? 1.f : v + 1.f;
    if (A == kActSelu) return (v >= 0.f) ? kSeluLambda : v + kSeluLambda * kSeluAlpha;
    if (A == kActSoftplus) return -expm1f(-v);
    if (A == kActSwish) {
        float q = sigmoidf_(s);
        return q * (1.f + s * (1.f - q));
    }
    return 1.f;  // linear
}

// f''(s), likewise.
template <int A>
__host__ __device__ __forceinline__ float act_grad2(float s, float v, float alpha) {
    (void)alpha;
    if (A == kActTanh) return -2.f * v * (1.f - v * v);
    if (A == kActSigmoid) return v * (1.f - v) * (1.f - 2.f * v);
    if (A == kActElu) return (v >= 0.f) ? 0.f : v + 1.f;
    if (A == kActSelu) return (v >= 0.f) ? 0.f : v + kSeluLambda * kSeluAlpha;
    if (A == kActSoftplus) {
        float e = expf(-v);
        return -expm1f(-v) * e;
    }
    if (A == kActSwish) {
        float q = sigmoidf_(s);
        return q * (1.f - q) * (2.f + s * (1.f - 2.f * q));
    }
    return 0.f;  // linear, relu, lrelu
}

// One element of the result (shared by the CUDA kernel and the host emulation).
template <typename T, int A>
__host__ __device__ __forceinline__ float bias_act_element(const BiasActArgs& a, int64_t i) {
    const T* x = static_cast<const T*>(a.x);
    float bias = 0.f;
    if (a.b != nullptr && a.bias_len > 0)
        bias = Elem<T>::load(static_cast<const T*>(a.b)[(i / a.bias_stride) % a.bias_len]);
    if (a.mode == kBiasActForward) {
        float y = act_value<A>(Elem<T>::load(x[i]) + bias, a.alpha) * a.gain;
        if (a.clamp >= 0.f)
            y = (y > a.clamp) ? a.clamp : (y < -a.clamp) ? -a.clamp : y;
        return y;
    }
    float s = 0.f, v = 0.f, yref = 0.f;
    if (bias_act_grad_from_x(A) && a.xref != nullptr)
        s = Elem<T>::load(static_cast<const T*>(a.xref)[i]) + bias;
    if (a.yref != nullptr) {
        yref = Elem<T>::load(static_cast<const T*>(a.yref)[i]);
        if (bias_act_grad_from_y(A) && a.gain != 0.f)
            v = yref / a.gain;
    }
    float g = Elem<T>::load(x[i]);
    float r;
    if (a.mode == kBiasActGrad) {
        r = g * a.gain * act_grad<A>(s, v, a.alpha);
    } else {
        float dy = (a.dy != nullptr) ? Elem<T>::load(static_cast<const T*>(a.dy)[i]) : 0.f;
        r = g * dy * a.gain * act_grad2<A>(s, v, a.alpha);
    }
    if (a.clamp >= 0.f && a.yref != nullptr && !(fabsf(yref) < a.clamp))
        r = 0.f;
    return r;
}

template <typename T, int A>
__global__ void __launch_bounds__(kThreads) bias_act_kernel(BiasActArgs a) {
    T* out = static_cast<T*>(a.out);
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < a.numel; i += step)
        out[i] = Elem<T>::store(bias_act_element<T, A>(a, i));
}

// Dispatch on dtype and activation, handing <T, A> to a visitor.
template <typename Visitor, typename T>
int dispatch_act(const BiasActArgs& a, Visitor& v) {
    switch (a.act) {
        case kActLinear: return v.template run<T, kActLinear>(a);
        case kActRelu: return v.template run<T, kActRelu>(a);
        case kActLrelu: return v.template run<T, kActLrelu>(a);
        case kActTanh: return v.template run<T, kActTanh>(a);
        case kActSigmoid: return v.template run<T, kActSigmoid>(a);
        case kActElu: return v.template run<T, kActElu>(a);
        case kActSelu: return v.template run<T, kActSelu>(a);
        case kActSoftplus: return v.template run<T, kActSoftplus>(a);
        case kActSwish: return v.template run<T, kActSwish>(a);
        default: return (int)cudaErrorInvalidValue;
    }
}

template <typename Visitor>
int dispatch(const BiasActArgs& a, Visitor& v) {
    if (a.mode < kBiasActForward || a.mode > kBiasActGrad2 || a.numel < 0 ||
        (a.b != nullptr && (a.bias_len < 1 || a.bias_stride < 1)))
        return (int)cudaErrorInvalidValue;
    if (a.dtype == kFloat32) return dispatch_act<Visitor, float>(a, v);
    if (a.dtype == kFloat16) return dispatch_act<Visitor, __half>(a, v);
    if (a.dtype == kBFloat16) return dispatch_act<Visitor, __nv_bfloat16>(a, v);
    return (int)cudaErrorInvalidValue;
}

struct CudaLauncher {
    cudaStream_t stream;
    template <typename T, int A>
    int run(const BiasActArgs& a) {
        if (a.numel == 0) return 0;
        int64_t blocks = (a.numel + kThreads - 1) / kThreads;
        if (blocks > kMaxBlocks) blocks = kMaxBlocks;
        bias_act_kernel<T, A><<<(unsigned)blocks, kThreads, 0, stream>>>(a);
        return (int)cudaGetLastError();
    }
};

#if defined(DEGAN_HOST_EMULATION)
struct HostEmulator {
    template <typename T, int A>
    int run(const BiasActArgs& a) {
        T* out = static_cast<T*>(a.out);
        for (int64_t i = 0; i < a.numel; ++i)
            out[i] = Elem<T>::store(bias_act_element<T, A>(a, i));
        return 0;
    }
};
#endif

}  // namespace

int bias_act_launch(const BiasActArgs& args, void* stream) {
    CudaLauncher launcher{static_cast<cudaStream_t>(stream)};
    return dispatch(args, launcher);
}

}  // namespace degan_ops

#if defined(DEGAN_HOST_EMULATION)
// Host emulation entry point (ctypes-friendly); pointers are host memory, nullptr for absent tensors.
extern "C" int degan_bias_act_emulate(const void* x, const void* b, const void* xref, const void* yref, const void* dy,
                                      void* out, int dtype, int64_t numel, int64_t bias_stride, int64_t bias_len,
                                      int mode, int act, float alpha, float gain, float clamp) {
    degan_ops::BiasActArgs a;
    a.x = x; a.b = b; a.xref = xref; a.yref = yref; a.dy = dy; a.out = out;
    a.dtype = dtype; a.numel = numel; a.bias_stride = bias_stride; a.bias_len = bias_len;
    a.mode = mode; a.act = act; a.alpha = alpha; a.gain = gain; a.clamp = clamp;
    degan_ops::HostEmulator emu;
    return degan_ops::dispatch(a, emu);
}
#endif

// degan custom CUDA ops: the interface between the plain CUDA kernels (*.cu) and the thin
// PyTorch binding (ops_binding.cpp).
//
// This header includes no CUDA and no PyTorch header, so both nvcc (for the kernels) and a
// plain C++ compiler (for the binding, with only PyTorch's include paths) can read it. Tensors
// cross it as raw pointers plus sizes and element strides; the CUDA stream crosses it as an
// opaque `void*` that the binding receives from Python (torch.cuda.current_stream().cuda_stream);
// the binding also makes the tensors' device current (c10 device guard) before calling a launcher.
// Launchers return a cudaError_t value as a plain int (0 = success); degan_cuda_error_string()
// turns it into text for the binding's error message.
//
// Semantics: stylegan2-arithmetic.md §1.2 (upfirdn2d) and §2 (bias_act), with the CUDA-specific
// numerics of §1.2/§2/§9 (gain applied to the fp32 accumulator, fp16/bf16 computed in fp32 and
// rounded once, the strict |y| < clamp gradient mask, softplus linear above 80).
#pragma once

#include <stdint.h>

// Small helpers below are callable from both host and device code when nvcc reads this file.
#if defined(__CUDACC__)
#define DEGAN_HOST_DEVICE __host__ __device__
#else
#define DEGAN_HOST_DEVICE
#endif

namespace degan_ops {

// Element type of a tensor crossing the interface.
enum DType : int {
    kFloat32 = 0,
    kFloat16 = 1,
    kBFloat16 = 2,
};

// ---------------------------------------------------------------------------------------------
// upfirdn2d (stylegan2-arithmetic.md §1.2), one 2-D pass:
//   y[n,c,oy,ox] = gain * sum_{ky,kx} g[ky,kx] * u[oy*down_y + ky - pad_y0, ox*down_x + kx - pad_x0]
// where u is x upsampled by zero insertion (u[uy*i, ux*j] = x[i,j], zero elsewhere and outside)
// and g is the correlation filter: g = f when flip_filter, else f reversed along both axes.
// A separable (1-D) filter is applied by the binding as two such passes, one with a [1,T]
// filter along the width and one with a [T,1] filter along the height.
struct Upfirdn2dArgs {
    const void* x;        // input, dtype x_dtype, sizes [batch, channels, in_h, in_w]
    void* y;              // output, dtype y_dtype, sizes [batch, channels, out_h, out_w]
    const float* f;       // filter, float32, contiguous [filter_h, filter_w], on the device
    int x_dtype;          // DType
    int y_dtype;          // DType
    int64_t batch, channels;
    int in_h, in_w, out_h, out_w;
    int64_t x_stride[4];  // element strides of x (n, c, h, w)
    int64_t y_stride[4];  // element strides of y (n, c, h, w)
    int filter_h, filter_w;
    int up_x, up_y, down_x, down_y;
    int pad_x0, pad_y0;   // left / top padding (negative = crop); the far side follows from out_h/out_w
    int flip_filter;      // 0 or 1
    float gain;           // multiplies the fp32 accumulator before the single rounding to y_dtype
};

// Largest supported up/down factor and filter size per axis (larger → reference path).
constexpr int kUpfirdn2dMaxFactor = 8;
constexpr int kUpfirdn2dMaxTaps = 64;

// Launch on `stream` (a cudaStream_t). Returns a cudaError_t value (0 = success).
int upfirdn2d_launch(const Upfirdn2dArgs& args, void* stream);

// ---------------------------------------------------------------------------------------------
// bias_act (stylegan2-arithmetic.md §2), elementwise over a dense tensor in storage order.
enum BiasActMode : int {
    kBiasActForward = 0,   // out = clampc(gain * f(x + b))
    kBiasActGrad = 1,      // out = x * gain * f'(.) * [|yref| < clamp]          (x holds dL/dy)
    kBiasActGrad2 = 2,     // out = x * dy * gain * f''(.) * [|yref| < clamp]    (x holds d(dL/dx))
};

// Activation codes; the order matches the table of stylegan2-arithmetic.md §2.
enum BiasActAct : int {
    kActLinear = 0, kActRelu = 1, kActLrelu = 2, kActTanh = 3, kActSigmoid = 4,
    kActElu = 5, kActSelu = 6, kActSoftplus = 7, kActSwish = 8,
};
constexpr int kBiasActNumActs = 9;

// Which saved tensors the derivative modes read (stylegan2-arithmetic.md §2, "gradient from"):
// swish is differentiated from the input x (+ bias), the others except linear from the output y.
// The output y is also needed whenever a clamp is set (the gradient mask |y| < clamp).
DEGAN_HOST_DEVICE inline constexpr bool bias_act_grad_from_x(int act) { return act == kActSwish; }
DEGAN_HOST_DEVICE inline constexpr bool bias_act_grad_from_y(int act) { return act != kActSwish && act != kActLinear; }

struct BiasActArgs {
    const void* x;        // mode 0: the input; modes 1/2: the incoming gradient
    const void* b;        // bias [bias_len] or nullptr (added to x in mode 0, to xref in modes 1/2)
    const void* xref;     // saved input (before bias) for activations differentiated from x, or nullptr
    const void* yref;     // saved output for activations differentiated from y / the clamp mask, or nullptr
    const void* dy;       // mode 2 only: the first-order incoming gradient
    void* out;            // result, same layout as x
    int dtype;            // DType shared by every tensor argument
    int64_t numel;        // number of elements (all tensors share one dense layout)
    int64_t bias_stride;  // storage stride of the bias axis in that layout
    int64_t bias_len;     // size of the bias axis (0 when b is nullptr)
    int mode;             // BiasActMode
    int act;              // BiasActAct
    float alpha;          // lrelu slope
    float gain;
    float clamp;          // < 0 disables the clamp
};

int bias_act_launch(const BiasActArgs& args, void* stream);

// Human-readable text for an error code returned by a launcher.
const char* degan_cuda_error_string(int code);

}  // namespace degan_ops

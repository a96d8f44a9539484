// Thin PyTorch binding of the degan CUDA kernels (upfirdn2d_kernel.cu, bias_act_kernel.cu).
//
// It validates tensors (device, dtype, shape, layout), allocates outputs, makes the tensors'
// device current with c10's device-generic guard, and calls the launchers of kernels.h with raw
// pointers, sizes and strides. The CUDA stream arrives from Python as an integer
// (torch.cuda.current_stream(device).cuda_stream), so this file includes no CUDA header and can
// be syntax-checked with a plain C++ compiler and PyTorch's include paths.
//
// Semantics: stylegan2-arithmetic.md §1.2 (upfirdn2d) and §2 (bias_act); the autograd wiring
// lives in torch_utils/ops/cuda_kernels.py.

#include <torch/extension.h>
#include <c10/core/DeviceGuard.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "kernels.h"

namespace {

// Bumped whenever a Python-visible signature below changes; cuda_plugin.py checks it.
constexpr int kAbiVersion = 1;

int dtype_code(const torch::Tensor& t) {
    switch (t.scalar_type()) {
        case torch::kFloat: return degan_ops::kFloat32;
        case torch::kHalf: return degan_ops::kFloat16;
        case torch::kBFloat16: return degan_ops::kBFloat16;
        default: TORCH_CHECK(false, "degan ops: unsupported dtype ", t.scalar_type(),
                             " (expected float32, float16 or bfloat16)");
    }
    return -1;
}

void check_launch(int err, const char* op) {
    TORCH_CHECK(err == 0, "degan ops: ", op, " kernel launch failed: ", degan_ops::degan_cuda_error_string(err));
}

int checked_int(int64_t v, const char* what) {
    TORCH_CHECK(v >= std::numeric_limits<int>::min() && v <= std::numeric_limits<int>::max(),
                "degan ops: ", what, " out of range: ", v);
    return static_cast<int>(v);
}

// Output length of one axis (stylegan2-arithmetic.md §1.2): floor((n*up + p0 + p1 - taps) / down) + 1.
int64_t upfirdn_out_size(int64_t n, int64_t up, int64_t p0, int64_t p1, int64_t taps, int64_t down) {
    int64_t span = n * up + p0 + p1 - taps;
    if (span < 0) return 0;
    return span / down + 1;
}

// One 2-D pass of the kernel: x [N,C,H,W] -> y (allocated by the caller with the right size).
void upfirdn2d_pass(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& f, int64_t filter_h,
                    int64_t filter_w, int64_t upx, int64_t upy, int64_t downx, int64_t downy, int64_t padx0,
                    int64_t pady0, bool flip, double gain, int64_t stream) {
    degan_ops::Upfirdn2dArgs a;
    a.x = x.data_ptr();
    a.y = y.data_ptr();
    a.f = f.data_ptr<float>();
    a.x_dtype = dtype_code(x);
    a.y_dtype = dtype_code(y);
    a.batch = x.size(0);
    a.channels = x.size(1);
    a.in_h = checked_int(x.size(2), "input height");
    a.in_w = checked_int(x.size(3), "input width");
    a.out_h = checked_int(y.size(2), "output height");
    a.out_w = checked_int(y.size(3), "output width");
    for (int i = 0; i < 4; ++i) {
        a.x_stride[i] = x.stride(i);
        a.y_stride[i] = y.stride(i);
    }
    a.filter_h = checked_int(filter_h, "filter height");
    a.filter_w = checked_int(filter_w, "filter width");
    a.up_x = checked_int(upx, "up");
    a.up_y = checked_int(upy, "up");
    a.down_x = checked_int(downx, "down");
    a.down_y = checked_int(downy, "down");
    a.pad_x0 = checked_int(padx0, "padding");
    a.pad_y0 = checked_int(pady0, "padding");
    a.flip_filter = flip ? 1 : 0;
    a.gain = static_cast<float>(gain);
    check_launch(degan_ops::upfirdn2d_launch(a, reinterpret_cast<void*>(stream)), "upfirdn2d");
}

// upfirdn2d (stylegan2-arithmetic.md §1.2). f is float32: 2-D [fh, fw] (one pass) or 1-D [T]
// (separable: a pass along the width, then one along the height, through an fp32 intermediate,
// with the whole gain applied in the second pass).
torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
                        int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip, double gain,
                        int64_t stream) {
    TORCH_CHECK(x.is_cuda(), "degan upfirdn2d: x must be a CUDA tensor");
    TORCH_CHECK(f.device() == x.device(), "degan upfirdn2d: f must be on the same device as x");
    TORCH_CHECK(x.dim() == 4, "degan upfirdn2d: x must have shape [N, C, H, W]");
    TORCH_CHECK(f.scalar_type() == torch::kFloat, "degan upfirdn2d: f must be float32");
    TORCH_CHECK(f.dim() == 1 || f.dim() == 2, "degan upfirdn2d: f must be 1-D or 2-D");
    TORCH_CHECK(f.numel() > 0, "degan upfirdn2d: f must not be empty");
    const int64_t maxf = degan_ops::kUpfirdn2dMaxFactor, maxt = degan_ops::kUpfirdn2dMaxTaps;
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1 && upx <= maxf && upy <= maxf && downx <= maxf &&
                    downy <= maxf, "degan upfirdn2d: up/down factors must be in [1, ", maxf, "]");
    const int64_t fh = f.size(0), fw = f.size(f.dim() - 1);
    TORCH_CHECK(fh <= maxt && fw <= maxt, "degan upfirdn2d: filter larger than ", maxt, " taps");
    dtype_code(x);
    f = f.contiguous();
    const int64_t out_h = upfirdn_out_size(x.size(2), upy, pady0, pady1, fh, downy);
    const int64_t out_w = upfirdn_out_size(x.size(3), upx, padx0, padx1, fw, downx);
    TORCH_CHECK(out_h >= 1 && out_w >= 1, "degan upfirdn2d: empty output (", out_h, " x ", out_w, ")");

    c10::DeviceGuard guard(x.device());
    auto y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options().memory_format(x.suggest_memory_format()));
    if (y.numel() == 0) return y;
    if (f.dim() == 2) {
        upfirdn2d_pass(x, y, f, fh, fw, upx, upy, downx, downy, padx0, pady0, flip, gain, stream);
        return y;
    }
    auto tmp = torch::empty({x.size(0), x.size(1), x.size(2), out_w}, x.options().dtype(torch::kFloat));
    upfirdn2d_pass(x, tmp, f, 1, fw, upx, 1, downx, 1, padx0, 0, flip, 1.0, stream);
    upfirdn2d_pass(tmp, y, f, fh, 1, 1, upy, 1, downy, 0, pady0, flip, gain, stream);
    return y;
}

// Bring t to x's sizes and exact strides (copying only when they differ).
torch::Tensor like_x(const torch::Tensor& x, const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.sizes() == x.sizes(), "degan bias_act: ", name, " must have the shape of x");
    TORCH_CHECK(t.device() == x.device(), "degan bias_act: ", name, " must be on x's device");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "degan bias_act: ", name, " must have x's dtype");
    if (t.strides() == x.strides()) return t;
    auto r = torch::empty_like(x);
    r.copy_(t);
    return r;
}

const void* ptr_or_null(const std::optional<torch::Tensor>& t) {
    return t.has_value() ? t->data_ptr() : nullptr;
}

// bias_act (stylegan2-arithmetic.md §2) in one of three modes (kernels.h, BiasActMode):
//   0: x -> clampc(gain * f(x + b));  1: x = dL/dy -> dL/dx;  2: x = d(dL/dx) -> its derivative w.r.t. x.
torch::Tensor bias_act(torch::Tensor x, std::optional<torch::Tensor> b, std::optional<torch::Tensor> xref,
                       std::optional<torch::Tensor> yref, std::optional<torch::Tensor> dy, int64_t mode, int64_t act,
                       double alpha, double gain, double clamp, int64_t dim, int64_t stream) {
    TORCH_CHECK(x.is_cuda(), "degan bias_act: x must be a CUDA tensor");
    dtype_code(x);
    TORCH_CHECK(mode >= 0 && mode <= 2, "degan bias_act: mode must be 0, 1 or 2");
    TORCH_CHECK(act >= 0 && act < degan_ops::kBiasActNumActs, "degan bias_act: unknown activation code ", act);
    TORCH_CHECK(x.dim() == 0 || (dim >= 0 && dim < x.dim()), "degan bias_act: dim out of range");
    if (!x.is_non_overlapping_and_dense()) x = x.contiguous();
    if (mode >= 1) {
        TORCH_CHECK(!degan_ops::bias_act_grad_from_x(act) || xref.has_value(), "degan bias_act: xref required");
        TORCH_CHECK(!(degan_ops::bias_act_grad_from_y(act) || clamp >= 0) || yref.has_value(),
                    "degan bias_act: yref required");
        TORCH_CHECK(mode != 2 || dy.has_value(), "degan bias_act: dy required in mode 2");
    }
    if (xref.has_value()) xref = like_x(x, *xref, "xref");
    if (yref.has_value()) yref = like_x(x, *yref, "yref");
    if (dy.has_value()) dy = like_x(x, *dy, "dy");
    int64_t bias_len = 0, bias_stride = 1;
    if (b.has_value()) {
        TORCH_CHECK(x.dim() > 0, "degan bias_act: a bias needs x with at least one dimension");
        TORCH_CHECK(b->dim() == 1 && b->size(0) == x.size(dim), "degan bias_act: b must be 1-D with x.shape[dim] entries");
        TORCH_CHECK(b->device() == x.device() && b->scalar_type() == x.scalar_type(),
                    "degan bias_act: b must match x's device and dtype");
        b = b->contiguous();
        bias_len = x.size(dim);
        bias_stride = (bias_len > 1) ? x.stride(dim) : 1;
    }

    c10::DeviceGuard guard(x.device());
    auto out = torch::empty_like(x);
    degan_ops::BiasActArgs a;
    a.x = x.data_ptr();
    a.b = ptr_or_null(b);
    a.xref = ptr_or_null(xref);
    a.yref = ptr_or_null(yref);
    a.dy = ptr_or_null(dy);
    a.out = out.data_ptr();
    a.dtype = dtype_code(x);
    a.numel = x.numel();
    a.bias_stride = bias_stride;
    a.bias_len = bias_len;
    a.mode = static_cast<int>(mode);
    a.act = static_cast<int>(act);
    a.alpha = static_cast<float>(alpha);
    a.gain = static_cast<float>(gain);
    a.clamp = static_cast<float>(clamp);
    check_launch(degan_ops::bias_act_launch(a, reinterpret_cast<void*>(stream)), "bias_act");
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "degan custom CUDA ops (upfirdn2d, bias_act); see torch_utils/ops/cuda_kernels.py";
    m.attr("abi_version") = kAbiVersion;
    m.def("upfirdn2d", &upfirdn2d, "upfirdn2d (stylegan2-arithmetic.md §1.2)", py::arg("x"), py::arg("f"),
          py::arg("upx"), py::arg("upy"), py::arg("downx"), py::arg("downy"), py::arg("padx0"), py::arg("padx1"),
          py::arg("pady0"), py::arg("pady1"), py::arg("flip"), py::arg("gain"), py::arg("stream"));
    m.def("bias_act", &bias_act, "bias_act (stylegan2-arithmetic.md §2)", py::arg("x"), py::arg("b"),
          py::arg("xref"), py::arg("yref"), py::arg("dy"), py::arg("mode"), py::arg("act"), py::arg("alpha"),
          py::arg("gain"), py::arg("clamp"), py::arg("dim"), py::arg("stream"));
}

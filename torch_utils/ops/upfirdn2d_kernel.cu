// upfirdn2d CUDA kernel: upsample (zero insertion) -> pad/crop -> FIR -> downsample, one 2-D pass.
//
// Semantics: stylegan2-arithmetic.md §1.2, with the CUDA numerics of §1.2/§9: every output is
// one fp32 accumulator over the filter taps that meet non-zero (non-inserted) input samples,
// multiplied by `gain` and rounded once to the output dtype; fp16/bf16 input is widened to fp32
// when it is staged in shared memory.
//
// Layout of the work: each thread block owns a tile of outputs (tile_w x tile_h pixels of
// tile_p channel planes). It stages the filter (already in correlation order) and the input
// window that tile reads in shared memory, zero-filling samples outside the input, so the
// inner loop needs no bounds checks. An output (oy, ox) reads upsampled row r = oy*down_y + ky
// - pad_y0; only the taps ky with r divisible by up_y meet a real sample (polyphase), so the
// loop starts at the first such tap and steps by up_y, reading consecutive staged input rows.
// A few common StyleGAN2 shapes (4x4 filter with up 2, down 2, or neither) get compile-time
// factors so the tap loops unroll; everything else runs the same code with runtime factors.
//
// Only CUDA headers are included, so this file compiles with plain nvcc. Building it with
// -DDEGAN_HOST_EMULATION additionally exports a host function that runs the very same tile
// code on the CPU, block by block and thread by thread (tests/test_cuda_ops.py uses it to check
// the indexing on machines without a GPU).

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "elem.cuh"

#if defined(DEGAN_HOST_EMULATION)
#include <vector>
#endif

namespace degan_ops {
namespace {

constexpr int kThreads = 256;              // threads per block
constexpr int kTargetOutputs = 1024;       // outputs per block we aim for
constexpr int kSoftTileBytes = 16 * 1024;  // staged-input budget we aim for (shared memory)


// Floor division and non-negative remainder for b > 0 (C++ '/' truncates toward zero).
__host__ __device__ __forceinline__ int floor_div(int a, int b) {
    int q = a / b;
    return (q * b > a) ? q - 1 : q;
}
__host__ __device__ __forceinline__ int pos_mod(int a, int b) {
    int r = a % b;
    return (r < 0) ? r + b : r;
}

// ---------------------------------------------------------------------------------------------
// Launch geometry, chosen on the host.

struct TilePlan {
    int tile_w, tile_h, tile_p;  // outputs per block: columns, rows, channel planes
    int in_tw, in_th;            // staged input window per plane: columns, rows
    int tiles_w, tiles_h;        // tiles along the output width / height
    int64_t plane_blocks;        // ceil(planes / tile_p)
    int filter_floats;           // staged filter size (filter_h * filter_w)
    size_t smem_bytes;           // dynamic shared memory per block
};

struct Params {
    const void* x;
    void* y;
    const float* f;
    int64_t planes, channels;
    int in_h, in_w, out_h, out_w;
    int64_t xs[4], ys[4];
    int fh, fw, upx, upy, downx, downy, padx0, pady0, flip;
    float gain;
    TilePlan plan;
};

// Input samples one output tile reads along an axis (upper bound, see the derivation in
// make_plan): taps of `tile` outputs spaced `down` apart over a `taps`-long filter, divided by `up`.
inline int input_extent(int tile, int down, int taps, int up) {
    return ((tile - 1) * down + taps - 1) / up + 1;
}

// Output tile shape: start from 32x32 (clipped to the output), halve the longer side until
// the staged window fits the soft budget, then stack channel planes up to ~kTargetOutputs
// outputs per block (small feature maps with many channels would otherwise idle most threads).
inline TilePlan make_plan(const Params& p) {
    TilePlan t;
    t.tile_w = p.out_w < 32 ? p.out_w : 32;
    t.tile_h = p.out_h < 32 ? p.out_h : 32;
    for (;;) {
        t.in_tw = input_extent(t.tile_w, p.downx, p.fw, p.upx);
        t.in_th = input_extent(t.tile_h, p.downy, p.fh, p.upy);
        size_t bytes = (size_t)t.in_tw * t.in_th * sizeof(float);
        if (bytes <= (size_t)kSoftTileBytes || (t.tile_w == 1 && t.tile_h == 1))
            break;
        if (t.tile_w >= t.tile_h) t.tile_w = (t.tile_w + 1) / 2;
        else t.tile_h = (t.tile_h + 1) / 2;
    }
    int64_t per_plane_out = (int64_t)t.tile_w * t.tile_h;
    int64_t tp = kTargetOutputs / per_plane_out;
    if (tp > p.planes) tp = p.planes;
    if (tp < 1) tp = 1;
    while (tp > 1 && (size_t)tp * t.in_tw * t.in_th * sizeof(float) > (size_t)kSoftTileBytes)
        tp = (tp + 1) / 2;
    t.tile_p = (int)tp;
    t.tiles_w = (p.out_w + t.tile_w - 1) / t.tile_w;
    t.tiles_h = (p.out_h + t.tile_h - 1) / t.tile_h;
    t.plane_blocks = (p.planes + t.tile_p - 1) / t.tile_p;
    t.filter_floats = p.fh * p.fw;
    t.smem_bytes = ((size_t)t.filter_floats + (size_t)t.tile_p * t.in_tw * t.in_th) * sizeof(float);
    return t;
}

// ---------------------------------------------------------------------------------------------
// Tile code shared by the CUDA kernel and the host emulation. `tid`/`nthreads` play the role of
// threadIdx.x/blockDim.x; the caller separates the phases with a barrier.

// Where a tile starts: first output column/row/plane and the first staged input column/row.
// The first input row a tile needs is the smallest iy with iy*up_y >= oy0*down_y - pad_y0.
struct TileOrigin {
    int ox0, oy0, ix0, iy0;
    int64_t plane0;
};

template <int UP, int DOWN>
__host__ __device__ __forceinline__ TileOrigin tile_origin(const Params& p, int tile_index, int64_t plane_block) {
    const int upx = UP ? UP : p.upx, upy = UP ? UP : p.upy;
    const int downx = DOWN ? DOWN : p.downx, downy = DOWN ? DOWN : p.downy;
    TileOrigin o;
    int tx = tile_index % p.plan.tiles_w;
    int ty = tile_index / p.plan.tiles_w;
    o.ox0 = tx * p.plan.tile_w;
    o.oy0 = ty * p.plan.tile_h;
    o.ix0 = floor_div(o.ox0 * downx - p.padx0 + upx - 1, upx);
    o.iy0 = floor_div(o.oy0 * downy - p.pady0 + upy - 1, upy);
    o.plane0 = plane_block * p.plan.tile_p;
    return o;
}

// Stage the filter in correlation order: g = f if flip_filter else f reversed on both axes.
__host__ __device__ __forceinline__ void stage_filter(const Params& p, float* sf, int tid, int nthreads) {
    const int n = p.fh * p.fw;
    for (int i = tid; i < n; i += nthreads) {
        int ky = i / p.fw;
        int kx = i - ky * p.fw;
        int src = p.flip ? i : (p.fh - 1 - ky) * p.fw + (p.fw - 1 - kx);
        sf[i] = p.f[src];
    }
}

// Stage the input window of every plane in the tile, as fp32, zero outside the input.
template <typename TIn>
__host__ __device__ __forceinline__ void stage_input(const Params& p, const TileOrigin& o, float* sx,
                                                     int tid, int nthreads) {
    const TIn* x = static_cast<const TIn*>(p.x);
    const int tw = p.plan.in_tw, th = p.plan.in_th;
    const int per_plane = tw * th;
    const int total = p.plan.tile_p * per_plane;
    for (int i = tid; i < total; i += nthreads) {
        int pz = i / per_plane;
        int r = i - pz * per_plane;
        int ty = r / tw;
        int tx = r - ty * tw;
        int64_t plane = o.plane0 + pz;
        int iy = o.iy0 + ty, ix = o.ix0 + tx;
        float v = 0.f;
        if (plane < p.planes && iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w) {
            int64_t n = plane / p.channels;
            int64_t c = plane - n * p.channels;
            v = Elem<TIn>::load(x[n * p.xs[0] + c * p.xs[1] + (int64_t)iy * p.xs[2] + (int64_t)ix * p.xs[3]]);
        }
        sx[i] = v;
    }
}

// Compute every output of the tile from the staged data (polyphase tap loops, fp32 accumulator).
template <typename TOut, int UP, int DOWN, int FT>
__host__ __device__ __forceinline__ void compute_tile(const Params& p, const TileOrigin& o, const float* sf,
                                                      const float* sx, int tid, int nthreads) {
    const int upx = UP ? UP : p.upx, upy = UP ? UP : p.upy;
    const int downx = DOWN ? DOWN : p.downx, downy = DOWN ? DOWN : p.downy;
    const int fw = FT ? FT : p.fw, fh = FT ? FT : p.fh;
    const int nkx = (fw + upx - 1) / upx, nky = (fh + upy - 1) / upy;  // max taps that meet samples
    const int tw = p.plan.in_tw, th = p.plan.in_th;
    const int tile_w = p.plan.tile_w, tile_h = p.plan.tile_h;
    const int per_plane = tile_w * tile_h;
    const int total = p.plan.tile_p * per_plane;
    TOut* y = static_cast<TOut*>(p.y);
    for (int i = tid; i < total; i += nthreads) {
        int pz = i / per_plane;
        int r = i - pz * per_plane;
        int ry = r / tile_w;
        int rx = r - ry * tile_w;
        int oy = o.oy0 + ry, ox = o.ox0 + rx;
        int64_t plane = o.plane0 + pz;
        if (oy >= p.out_h || ox >= p.out_w || plane >= p.planes)
            continue;
        // Upsampled-and-padded position of tap 0 and the first tap that meets a real sample.
        int uy = oy * downy - p.pady0, ux = ox * downx - p.padx0;
        int ky0 = pos_mod(-uy, upy), kx0 = pos_mod(-ux, upx);
        int sy0 = (uy + ky0) / upy - o.iy0;  // exact division; staged row of that sample
        int sx0 = (ux + kx0) / upx - o.ix0;
        const float* src = sx + ((int64_t)pz * th + sy0) * tw + sx0;
        float acc = 0.f;
#pragma unroll
        for (int jy = 0; jy < nky; ++jy) {
            int ky = ky0 + jy * upy;
            if (ky < fh) {
#pragma unroll
                for (int jx = 0; jx < nkx; ++jx) {
                    int kx = kx0 + jx * upx;
                    if (kx < fw)
                        acc += src[jy * tw + jx] * sf[ky * fw + kx];
                }
            }
        }
        int64_t n = plane / p.channels;
        int64_t c = plane - n * p.channels;
        y[n * p.ys[0] + c * p.ys[1] + (int64_t)oy * p.ys[2] + (int64_t)ox * p.ys[3]] = Elem<TOut>::store(acc * p.gain);
    }
}

// ---------------------------------------------------------------------------------------------
// The CUDA kernel: grid.x enumerates output tiles, grid.y strides over blocks of planes.

template <typename TIn, typename TOut, int UP, int DOWN, int FT>
__global__ void __launch_bounds__(kThreads) upfirdn2d_kernel(Params p) {
    extern __shared__ float smem[];
    float* sf = smem;
    float* sx = smem + p.plan.filter_floats;
    stage_filter(p, sf, threadIdx.x, blockDim.x);
    for (int64_t pb = blockIdx.y; pb < p.plan.plane_blocks; pb += gridDim.y) {
        TileOrigin o = tile_origin<UP, DOWN>(p, blockIdx.x, pb);
        __syncthreads();  // the previous plane block is finished with sx
        stage_input<TIn>(p, o, sx, threadIdx.x, blockDim.x);
        __syncthreads();  // sx (and, on the first pass, sf) complete
        compute_tile<TOut, UP, DOWN, FT>(p, o, sf, sx, threadIdx.x, blockDim.x);
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch: choose the element types and the specialisation, then hand them to a visitor
// (the CUDA launcher, or the host emulation).

template <typename Visitor, typename T>
int dispatch_shape(const Params& p, Visitor& v) {
    if (p.fw == 4 && p.fh == 4 && p.upx == p.upy && p.downx == p.downy) {
        if (p.upx == 1 && p.downx == 1) return v.template run<T, T, 1, 1, 4>(p);
        if (p.upx == 2 && p.downx == 1) return v.template run<T, T, 2, 1, 4>(p);
        if (p.upx == 1 && p.downx == 2) return v.template run<T, T, 1, 2, 4>(p);
    }
    return v.template run<T, T, 0, 0, 0>(p);
}

template <typename Visitor>
int dispatch(const Params& p, int x_dtype, int y_dtype, Visitor& v) {
    if (x_dtype == kFloat32 && y_dtype == kFloat32) return dispatch_shape<Visitor, float>(p, v);
    if (x_dtype == kFloat16 && y_dtype == kFloat16) return dispatch_shape<Visitor, __half>(p, v);
    if (x_dtype == kBFloat16 && y_dtype == kBFloat16) return dispatch_shape<Visitor, __nv_bfloat16>(p, v);
    // Mixed types occur only in the two passes of a separable filter (fp32 intermediate).
    if (x_dtype == kFloat16 && y_dtype == kFloat32) return v.template run<__half, float, 0, 0, 0>(p);
    if (x_dtype == kFloat32 && y_dtype == kFloat16) return v.template run<float, __half, 0, 0, 0>(p);
    if (x_dtype == kBFloat16 && y_dtype == kFloat32) return v.template run<__nv_bfloat16, float, 0, 0, 0>(p);
    if (x_dtype == kFloat32 && y_dtype == kBFloat16) return v.template run<float, __nv_bfloat16, 0, 0, 0>(p);
    return (int)cudaErrorInvalidValue;
}

// Validate the arguments and fill the kernel parameters. Returns 0 or a cudaError_t value.
int make_params(const Upfirdn2dArgs& a, Params& p) {
    if (a.up_x < 1 || a.up_y < 1 || a.down_x < 1 || a.down_y < 1 ||
        a.up_x > kUpfirdn2dMaxFactor || a.up_y > kUpfirdn2dMaxFactor ||
        a.down_x > kUpfirdn2dMaxFactor || a.down_y > kUpfirdn2dMaxFactor ||
        a.filter_w < 1 || a.filter_h < 1 || a.filter_w > kUpfirdn2dMaxTaps || a.filter_h > kUpfirdn2dMaxTaps ||
        a.out_w < 1 || a.out_h < 1 || a.in_w < 0 || a.in_h < 0 || a.batch < 0 || a.channels < 0)
        return (int)cudaErrorInvalidValue;
    p.x = a.x;
    p.y = a.y;
    p.f = a.f;
    p.channels = a.channels > 0 ? a.channels : 1;
    p.planes = a.batch * a.channels;
    p.in_h = a.in_h; p.in_w = a.in_w; p.out_h = a.out_h; p.out_w = a.out_w;
    for (int i = 0; i < 4; ++i) { p.xs[i] = a.x_stride[i]; p.ys[i] = a.y_stride[i]; }
    p.fh = a.filter_h; p.fw = a.filter_w;
    p.upx = a.up_x; p.upy = a.up_y; p.downx = a.down_x; p.downy = a.down_y;
    p.padx0 = a.pad_x0; p.pady0 = a.pad_y0;
    p.flip = a.flip_filter ? 1 : 0;
    p.gain = a.gain;
    p.plan = make_plan(p);
    return 0;
}

struct CudaLauncher {
    cudaStream_t stream;
    template <typename TIn, typename TOut, int UP, int DOWN, int FT>
    int run(const Params& p) {
        dim3 grid((unsigned)(p.plan.tiles_w * p.plan.tiles_h),
                  (unsigned)(p.plan.plane_blocks < 65535 ? p.plan.plane_blocks : 65535), 1);
        upfirdn2d_kernel<TIn, TOut, UP, DOWN, FT><<<grid, kThreads, p.plan.smem_bytes, stream>>>(p);
        return (int)cudaGetLastError();
    }
};

#if defined(DEGAN_HOST_EMULATION)
// Runs the tile code on the CPU: every block, then for each plane block the three phases for
// every "thread" in turn (a phase finishes for all threads before the next, like a barrier).
struct HostEmulator {
    int specialised;  // set to 1 when a compile-time specialisation was chosen (for tests)
    template <typename TIn, typename TOut, int UP, int DOWN, int FT>
    int run(const Params& p) {
        specialised = (UP != 0);
        std::vector<float> smem(p.plan.smem_bytes / sizeof(float));
        float* sf = smem.data();
        float* sx = sf + p.plan.filter_floats;
        const int nblocks = p.plan.tiles_w * p.plan.tiles_h;
        for (int bx = 0; bx < nblocks; ++bx) {
            for (int tid = 0; tid < kThreads; ++tid) stage_filter(p, sf, tid, kThreads);
            for (int64_t pb = 0; pb < p.plan.plane_blocks; ++pb) {
                TileOrigin o = tile_origin<UP, DOWN>(p, bx, pb);
                for (int tid = 0; tid < kThreads; ++tid) stage_input<TIn>(p, o, sx, tid, kThreads);
                for (int tid = 0; tid < kThreads; ++tid) compute_tile<TOut, UP, DOWN, FT>(p, o, sf, sx, tid, kThreads);
            }
        }
        return 0;
    }
};
#endif

}  // namespace

int upfirdn2d_launch(const Upfirdn2dArgs& args, void* stream) {
    Params p;
    int err = make_params(args, p);
    if (err != 0) return err;
    if (p.planes == 0) return 0;
    CudaLauncher launcher{static_cast<cudaStream_t>(stream)};
    return dispatch(p, args.x_dtype, args.y_dtype, launcher);
}

const char* degan_cuda_error_string(int code) {
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

}  // namespace degan_ops

#if defined(DEGAN_HOST_EMULATION)
// Host emulation entry point (ctypes-friendly). Sizes/strides/factors as in Upfirdn2dArgs;
// pointers are host memory. Returns 0 on success, a cudaError_t value for invalid arguments,
// and writes 1 to *specialised when a compile-time specialisation handled the call.
extern "C" int degan_upfirdn2d_emulate(const void* x, void* y, const float* f, int x_dtype, int y_dtype,
                                       int64_t batch, int64_t channels, int in_h, int in_w, int out_h, int out_w,
                                       const int64_t* x_stride, const int64_t* y_stride, int filter_h, int filter_w,
                                       int up_x, int up_y, int down_x, int down_y, int pad_x0, int pad_y0,
                                       int flip_filter, float gain, int* specialised) {
    degan_ops::Upfirdn2dArgs a;
    a.x = x; a.y = y; a.f = f; a.x_dtype = x_dtype; a.y_dtype = y_dtype;
    a.batch = batch; a.channels = channels; a.in_h = in_h; a.in_w = in_w; a.out_h = out_h; a.out_w = out_w;
    for (int i = 0; i < 4; ++i) { a.x_stride[i] = x_stride[i]; a.y_stride[i] = y_stride[i]; }
    a.filter_h = filter_h; a.filter_w = filter_w;
    a.up_x = up_x; a.up_y = up_y; a.down_x = down_x; a.down_y = down_y;
    a.pad_x0 = pad_x0; a.pad_y0 = pad_y0; a.flip_filter = flip_filter; a.gain = gain;
    degan_ops::Params p;
    int err = degan_ops::make_params(a, p);
    if (err != 0) return err;
    degan_ops::HostEmulator emu{0};
    if (p.planes > 0) err = degan_ops::dispatch(p, x_dtype, y_dtype, emu);
    if (specialised) *specialised = emu.specialised;
    return err;
}

// The staged shared memory a launch would request (bytes), for tests of the tile planner.
extern "C" int64_t degan_upfirdn2d_smem_bytes(int64_t planes, int in_h, int in_w, int out_h, int out_w,
                                              int filter_h, int filter_w, int up_x, int up_y, int down_x, int down_y) {
    degan_ops::Params p = {};
    p.planes = planes; p.channels = 1;
    p.in_h = in_h; p.in_w = in_w; p.out_h = out_h; p.out_w = out_w;
    p.fh = filter_h; p.fw = filter_w; p.upx = up_x; p.upy = up_y; p.downx = down_x; p.downy = down_y;
    return (int64_t)degan_ops::make_plan(p).smem_bytes;
}
#endif

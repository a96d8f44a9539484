// Element conversions shared by the CUDA kernels: every value is loaded as fp32, computed in
// fp32 and rounded once on store (stylegan2-arithmetic.md §1.2, §2: CUDA accumulates fp16 in fp32).
// CUDA headers only (see kernels.h for the header the C++ binding shares).
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

template <typename T> struct Elem;
template <> struct Elem<float> {
    static __host__ __device__ __forceinline__ float load(float v) { return v; }
    static __host__ __device__ __forceinline__ float store(float v) { return v; }
};
template <> struct Elem<__half> {
    static __host__ __device__ __forceinline__ float load(__half v) { return __half2float(v); }
    static __host__ __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <> struct Elem<__nv_bfloat16> {
    static __host__ __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __host__ __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

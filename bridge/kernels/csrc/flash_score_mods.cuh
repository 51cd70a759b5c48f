// Score modifiers of the mma.sync kernels: logit soft-capping and ALiBi (flash_params.h gives the definitions).
//
// The kernels keep raw scores s = q.k and fold the softmax scale into exp2, so the modifiers are applied in raw
// units: s' = (cap / scale) * tanh(s * scale / cap) - (slope / scale) * |r + diag - c|. The forward applies
// them to every score tile before the mask; the backward recomputes P from s' and multiplies dS by the
// soft-cap's derivative 1 - tanh^2 (ALiBi is a constant bias: it changes P, not dS's chain rule).
#pragma once
#include <cuda_fp16.h>
#include <cstdint>

#include "flash_params.h"

namespace bridge_flash {

// tanh through one exp: absolute error ~1e-7 (tanh.approx.f32's 2^-11 relative error, times a cap of 30-50,
// would move the logits by as much as bf16 rounding does). Saturates cleanly: exp overflow gives exactly +-1.
__device__ __forceinline__ float tanh_exp(float x) {
    return 1.f - 2.f / (__expf(2.f * x) + 1.f);
}

struct ScoreMods {
    float cap_raw;       // softcap / scale (0: no soft-cap)
    float inv_cap_raw;   // scale / softcap
    float slope_raw;     // ALiBi slope / scale (0: no ALiBi)

    // The modified raw score; *t receives tanh(s * scale / cap) (0 without soft-cap) for the backward.
    __device__ __forceinline__ float apply(float s, int dist, float& t) const {
        t = 0.f;
        if (cap_raw != 0.f) {
            t = tanh_exp(s * inv_cap_raw);
            s = cap_raw * t;
        }
        return fmaf(-slope_raw, static_cast<float>(dist), s);
    }
};

// The modifiers of (batch bi, query head hi).
__device__ __forceinline__ ScoreMods score_mods(const QKVParams& p, int bi, int hi) {
    ScoreMods m;
    m.cap_raw = p.softcap > 0.f ? p.softcap / p.scale_softmax : 0.f;
    m.inv_cap_raw = p.softcap > 0.f ? p.scale_softmax / p.softcap : 0.f;
    m.slope_raw = p.alibi_slopes != nullptr ? p.alibi_slopes[bi * p.alibi_batch_stride + hi] / p.scale_softmax : 0.f;
    return m;
}

__device__ __forceinline__ int band_distance(int row, int col, int diag) { return abs(row + diag - col); }

// Two soft-cap derivatives 1 - t^2 as fp16 (in [0, 1]: fp16 keeps 11 bits there), parked in the backward's
// dS tile between computing P and dS so they cost no registers across the dP product.
__device__ __forceinline__ uint32_t pack_dtanh(float t0, float t1) {
    __half2 v = __floats2half2_rn(fmaf(-t0, t0, 1.f), fmaf(-t1, t1, 1.f));
    return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float2 unpack_dtanh(uint32_t v) {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
}

}  // namespace bridge_flash

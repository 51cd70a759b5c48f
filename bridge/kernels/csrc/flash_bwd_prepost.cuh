// The two light passes around the main backward kernel.
//
//   pre-pass : D[row] = rowsum(dO * O) in fp32 (the softmax-gradient correction term), and zeroes the fp32
//              dQ accumulator rows that the main kernel will add into (saves a separate memset launch).
//   post-pass: dQ = softmax_scale * dq_accum, cast to the input dtype and stored with dQ's strides.
//
// dq_accum layout: [rows, h, D] fp32, contiguous, where a sequence's row r sits at
// row (fixed) bi * seqlen_q + r, (varlen) cu_seqlens_q[bi] + r.
#pragma once
#include "flash_bwd_utils.cuh"
#include "flash_params.h"

namespace bridge_flash {
namespace bwd {

constexpr int kPrepostThreads = 128;
constexpr int kPrepostRows = 32;  // query rows per CTA (grid: [ceil(seqlen_q / 32), h, b])

template <typename T, int D>
__global__ void __launch_bounds__(kPrepostThreads) flash_bwd_preprocess_kernel(const BwdParams p) {
    constexpr int kThreadsPerRow = D / 8;  // each thread owns 8 contiguous elements (16 bytes)
    constexpr int kRowsPerPass = kPrepostThreads / kThreadsPerRow;
    static_assert(32 % kThreadsPerRow == 0, "a row's threads must sit in one warp for the shuffle reduce");

    const int bi = blockIdx.z, hi = blockIdx.y;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const SeqSpan q = seq_span(p.cu_seqlens_q, bi, p.seqlen_q);
    const int col = (threadIdx.x % kThreadsPerRow) * 8;

    const T* o = static_cast<const T*>(p.o) + seq_offset(varlen, bi, q.start, p.o_batch_stride, p.o_row_stride) +
                 hi * p.o_head_stride + col;
    const T* dout = static_cast<const T*>(p.dout) +
                    seq_offset(varlen, bi, q.start, p.do_batch_stride, p.do_row_stride) + hi * p.do_head_stride + col;
    float* dsum = p.dsoftmax_sum + static_cast<int64_t>(bi) * p.lse_batch_stride + hi * p.lse_head_stride + q.start;

    for (int r0 = blockIdx.x * kPrepostRows; r0 < (blockIdx.x + 1) * kPrepostRows; r0 += kRowsPerPass) {
        const int r = r0 + threadIdx.x / kThreadsPerRow;
        float acc = 0.f;
        if (r < q.len) {
            const uint4 ov = *reinterpret_cast<const uint4*>(o + r * p.o_row_stride);
            const uint4 dv = *reinterpret_cast<const uint4*>(dout + r * p.do_row_stride);
            const uint32_t* ow = reinterpret_cast<const uint32_t*>(&ov);
            const uint32_t* dw = reinterpret_cast<const uint32_t*>(&dv);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float2 a = unpack2<T>(ow[i]), b = unpack2<T>(dw[i]);
                acc += a.x * b.x + a.y * b.y;
            }
            float4* accum = reinterpret_cast<float4*>(
                p.dq_accum + (accum_row(varlen, bi, q.start, p.seqlen_q, r) * p.h + hi) * D + col);
            accum[0] = make_float4(0.f, 0.f, 0.f, 0.f);
            accum[1] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int m = kThreadsPerRow / 2; m > 0; m /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, m);
        if (r < q.len && threadIdx.x % kThreadsPerRow == 0) dsum[r] = acc;
    }
}

template <typename T, int D>
__global__ void __launch_bounds__(kPrepostThreads) flash_bwd_postprocess_kernel(const BwdParams p) {
    constexpr int kThreadsPerRow = D / 8;
    constexpr int kRowsPerPass = kPrepostThreads / kThreadsPerRow;

    const int bi = blockIdx.z, hi = blockIdx.y;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const SeqSpan q = seq_span(p.cu_seqlens_q, bi, p.seqlen_q);
    const int col = (threadIdx.x % kThreadsPerRow) * 8;
    T* dq = static_cast<T*>(p.dq) + seq_offset(varlen, bi, q.start, p.dq_batch_stride, p.dq_row_stride) +
            hi * p.dq_head_stride + col;

    for (int r0 = blockIdx.x * kPrepostRows; r0 < (blockIdx.x + 1) * kPrepostRows; r0 += kRowsPerPass) {
        const int r = r0 + threadIdx.x / kThreadsPerRow;
        if (r >= q.len) continue;
        const float4* accum = reinterpret_cast<const float4*>(
            p.dq_accum + (accum_row(varlen, bi, q.start, p.seqlen_q, r) * p.h + hi) * D + col);
        const float4 a = accum[0], b = accum[1];
        const float s = p.scale_softmax;  // dS was accumulated w.r.t. the scaled logits
        uint4 out;
        out.x = ElemTraits<T>::pack(a.x * s, a.y * s);
        out.y = ElemTraits<T>::pack(a.z * s, a.w * s);
        out.z = ElemTraits<T>::pack(b.x * s, b.y * s);
        out.w = ElemTraits<T>::pack(b.z * s, b.w * s);
        *reinterpret_cast<uint4*>(dq + r * p.dq_row_stride) = out;
    }
}

}  // namespace bwd
}  // namespace bridge_flash

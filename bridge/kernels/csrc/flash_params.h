// Plain-data parameter structs shared by the forward and backward flash-attention kernels.
//
// Torch-free on purpose: every kernel translation unit includes only this header and the kernel
// templates, so CI (no GPU, no CUDA build of torch) can compile each one with nvcc for sm_90a.
//
// Layout conventions (all strides are in elements, the head dim is always contiguous):
//   fixed length : q [b, s_q, h, d], k/v [b, s_k, h_k, d]   (any batch/row/head strides, e.g. megatron's [s, b, h, d])
//   varlen       : q [total_q, h, d], k/v [total_k, h_k, d]  (cu_seqlens_* != nullptr; batch strides ignored,
//                  sequence i starts at row cu_seqlens[i])
//   lse / dsoftmax_sum (fp32): element (batch bi, head hi, row r) lives at
//                  lse + bi * lse_batch_stride + hi * lse_head_stride + (cu_seqlens_q ? cu_seqlens_q[bi] : 0) + r
//                  fixed: [b, h, s_q] -> batch stride h*s_q, head stride s_q
//                  varlen: [h, total_q] -> batch stride 0, head stride total_q
// GQA/MQA: query head hi reads K/V head hi / (h / h_k). K and V are never repeated in memory.
// Causal masking is bottom-right aligned: query row r of a sequence with lengths (sq, sk) may attend key
// column c iff c <= r + sk - sq. A row with no admissible key (or sk == 0) outputs zeros and lse = -inf.
// A sliding window (flash-attn's window_size) is aligned the same way: row r sees key c iff
//   r + sk - sq - window_left <= c <= r + sk - sq + window_right;
// causal is window_right = 0. The mma.sync kernels read only the window bounds, the Hopper kernels only
// is_causal (they decline calls with has_window).
#pragma once
#include <cstdint>

namespace bridge_flash {

struct QKVParams {
    const void* __restrict__ q;
    const void* __restrict__ k;
    const void* __restrict__ v;
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;

    const int* __restrict__ cu_seqlens_q;  // [b + 1] or nullptr (fixed length)
    const int* __restrict__ cu_seqlens_k;  // [b + 1] or nullptr (fixed length)

    int b;            // batch size (number of sequences)
    int seqlen_q;     // fixed: s_q; varlen: max_seqlen_q
    int seqlen_k;     // fixed: s_k; varlen: max_seqlen_k
    int h;            // query heads
    int h_k;          // key/value heads; h % h_k == 0
    int d;            // head dim (64 or 128 first; 96, 256 later)
    int64_t total_q;  // rows of q as passed: fixed b * s_q (unused), varlen total_q (the Hopper kernels' TMA bounds)
    int64_t total_k;  // same for k / v

    float scale_softmax;       // softmax scale (usually 1/sqrt(d))
    float scale_softmax_log2;  // scale_softmax * log2(e), for exp2f
    bool is_causal;
    bool is_bf16;              // else fp16

    // Window bounds, always set (fill_qkv_params in flash_api_common.cpp): an unbounded side is stored as a width no sequence of the
    // call reaches (window_left = seqlen_k, window_right = seqlen_q), causal as window_right = 0 (and a window (-1, 0) as causal), so the
    // kernels need no separate unbounded case and every bound computation stays within int.
    int window_left, window_right;
    bool has_window;           // a window narrower than causal / full attention was asked for

    // Score modifiers (mma.sync kernels only; the binding sends calls using them there). With x = scale * q.k:
    //   softcap > 0: x becomes softcap * tanh(x / softcap)            (0 = off)
    //   alibi_slopes: then x -= slope[bi, hi] * |r + sk - sq - c|      (nullptr = off; fp32 [h] or [b, h])
    float softcap;
    const float* __restrict__ alibi_slopes;
    int64_t alibi_batch_stride;  // 0 for [h], h for [b, h]

    int64_t lse_batch_stride, lse_head_stride;
};

struct FwdParams : QKVParams {
    void* __restrict__ o;                   // same layout rules as q
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    float* __restrict__ lse;                // see layout above
};

struct BwdParams : FwdParams {
    const void* __restrict__ dout;          // same layout rules as q
    int64_t do_batch_stride, do_row_stride, do_head_stride;

    void* __restrict__ dq;                  // outputs, same layout rules as q / k / v respectively
    void* __restrict__ dk;
    void* __restrict__ dv;
    int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
    int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
    int64_t dv_batch_stride, dv_row_stride, dv_head_stride;

    float* __restrict__ dsoftmax_sum;       // D = rowsum(dO * O), fp32, lse layout
    float* __restrict__ dq_accum;           // fp32 scratch for dQ, owned by the backward implementation
    void* __restrict__ workspace;           // extra scratch (e.g. deterministic-mode partials/semaphores), may be nullptr
    bool deterministic;                     // bit-identical gradients over repeated runs
};

}  // namespace bridge_flash

// Per-sequence geometry shared by every kernel, forward and backward: where sequence bi of a batch starts
// and how long it is, for fixed-length and packed variable-length (cu_seqlens) batches alike.
#pragma once

namespace bridge_flash {

/// Where one sequence of the batch lives: its first row (global packed row for varlen) and its length.
struct SeqSpan {
    int start;  // varlen: cu_seqlens[bi]; fixed: 0
    int len;    // rows in this sequence
};

__device__ __forceinline__ SeqSpan seq_span(const int* cu_seqlens, int bi, int fixed_len) {
    if (cu_seqlens == nullptr) return {0, fixed_len};
    const int s = cu_seqlens[bi];
    return {s, cu_seqlens[bi + 1] - s};
}

}  // namespace bridge_flash

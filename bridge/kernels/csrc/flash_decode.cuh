// KV-cache decode kernel (flash-decoding): attention of a few new query tokens over a long K/V cache.
//
// Decoding is bound by reading the cache, so the kernel is organised around K/V bytes, not query rows:
// * GQA packing: the h / h_k query heads of one K/V head (times the seqlen_q new tokens) are the rows of one
//   tile, so each K/V byte is read once per tile instead of once per query head (MQA: 32 heads, one read).
// * Split-KV: one CTA is one warp that streams its own range of the cache (multi-stage cp.async tiles,
//   tensor-core Q K^T and P V, online softmax). A batch of few sequences splits its cache over many CTAs so
//   the GPU fills; each split writes an fp32 partial normalised by its own sum plus its log-sum-exp, and the
//   combine kernel merges them with the weights exp(lse_split - lse).
// * Appending: new k/v are copied into the cache (contiguous or paged) by a small kernel first, so the
//   attention reads one uniform cache.
// Launcher at the bottom; instantiated per (dtype, head dim) in instantiations/flash_decode_*.cu.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "flash_decode_params.h"
#include "flash_primitives.cuh"

namespace bridge_flash {

// ---- shapes --------------------------------------------------------------------------------------
// MT 16-row MMA tiles of query rows per CTA (1 or 2). A CTA of kWarps warps streams its part of the cache in
// tiles of kWarps * kBlockN keys through kStages shared-memory slots (kStages - 1 tiles in flight while one is
// computed); warp w computes keys [w * kBlockN, (w + 1) * kBlockN) of every tile with its own online softmax,
// and the warps' rows are merged in shared memory at the end. The bytes in flight per SM keep HBM busy; the
// warps per SM hide the tensor-core and softmax latency.
// The BRIDGE_DECODE_* macros exist for tuning runs (build.py passes $BRIDGE_FLASH_EXTRA_CFLAGS through).
#ifndef BRIDGE_DECODE_BLOCKN
#define BRIDGE_DECODE_BLOCKN 64   // keys per warp and tile with one row tile at d 64; half that otherwise
#endif
#ifndef BRIDGE_DECODE_STAGES
#define BRIDGE_DECODE_STAGES 2
#endif
#ifndef BRIDGE_DECODE_WARPS
#define BRIDGE_DECODE_WARPS 1
#endif
#ifndef BRIDGE_DECODE_SPLIT_KEYS
#define BRIDGE_DECODE_SPLIT_KEYS 256  // a split streams at least this many keys (and one whole tile)
#endif
template <int D, int MT>
struct DecodeShape {
    static constexpr int kMTiles = MT;
    static constexpr int kBlockM = 16 * MT;
    static constexpr int kWarps = BRIDGE_DECODE_WARPS;
    static constexpr int kThreads = 32 * kWarps;
    // keys per warp and tile: fewer with two row tiles or d 128 (their accumulators take more registers)
    static constexpr int kBlockN = (D == 64 && MT == 1) ? BRIDGE_DECODE_BLOCKN
                                                        : (BRIDGE_DECODE_BLOCKN / 2 < 16 ? 16 : BRIDGE_DECODE_BLOCKN / 2);
    static constexpr int kTileN = kBlockN * kWarps;                                     // keys per CTA tile
    static constexpr int kStages = BRIDGE_DECODE_STAGES;
    static constexpr int kNTiles = kBlockN / 8;
    static constexpr int kDTiles = D / 8;
    static constexpr int kKStepsQK = D / 16;
    static constexpr int kKStepsPV = kBlockN / 16;
    static constexpr int kChunks = D / 8;                    // 16-byte chunks per row
    static constexpr int kRowsPerPass = kThreads / kChunks;  // rows one CTA-wide cp.async pass covers
    static constexpr int kTileElems = kTileN * D;
    static constexpr int kSmemBytes = (kBlockM * D + kStages * 2 * kTileElems) * 2;  // Q + stages of (K, V)
    // The epilogue reuses the K/V slots for every warp's normalised rows (fp32) and their LSE.
    static constexpr int kMergeBytes = kWarps * kBlockM * (D + 1) * 4;
    static_assert(D % 64 == 0, "head dim must be a multiple of 64 (swizzle period is 8 chunks)");
    static_assert(kTileN % kRowsPerPass == 0 && kBlockN % 16 == 0, "tile rows must divide evenly over the passes");
    static_assert(kStages >= 2, "the pipeline needs two stages at least");
    static_assert(kMergeBytes <= kStages * 2 * kTileElems * 2, "the merge must fit in the K/V slots");
};

// The keys sequence bi attends: its cache length plus the appended tokens, never past the cache's capacity.
__device__ __forceinline__ int decode_seqlen_k(const DecodeParams& p, int bi) {
    const int cached = p.cache_seqlens != nullptr ? p.cache_seqlens[bi] : p.cache_seqlen_fixed;
    return min(max(cached, 0) + p.seqlen_new, p.seqlen_k_bound);
}

// Offset (elements) of key `key` of sequence bi from the head's base pointer: through the page table when
// paged (page stride = batch stride), else a row of the sequence's contiguous cache (batch already in base).
__device__ __forceinline__ int64_t cache_row_offset(const DecodeParams& p, int bi, int key, int64_t batch_stride,
                                                    int64_t row_stride) {
    if (p.block_table != nullptr) {
        const int page = p.block_table[bi * p.block_table_stride + key / p.page_size];
        return page * batch_stride + (key % p.page_size) * row_stride;
    }
    return key * row_stride;
}

// Fills one stage's K and V tiles (swizzled [N x D]) with keys col0.. of the sequence; keys >= kv_end are
// zero-filled (their scores are masked, and zeros keep P V free of garbage).
template <typename T, typename S>
__device__ __forceinline__ void load_kv_tile(T* sK, T* sV, const T* k_head, const T* v_head, const DecodeParams& p,
                                             int bi, int col0, int kv_end, int tid) {
    const int chunk = tid % S::kChunks;
    const int row0 = tid / S::kChunks;
#pragma unroll
    for (int i = 0; i < S::kTileN / S::kRowsPerPass; ++i) {
        const int row = row0 + i * S::kRowsPerPass;
        const int key = col0 + row;
        const bool ok = key < kv_end;
        const T* k_src = k_head;
        const T* v_src = v_head;
        if (ok) {
            k_src += cache_row_offset(p, bi, key, p.k_batch_stride, p.k_row_stride) + chunk * 8;
            v_src += cache_row_offset(p, bi, key, p.v_batch_stride, p.v_row_stride) + chunk * 8;
        }
        const int dst = swizzled_offset<S::kChunks * 8>(row, chunk);
        cp_async_16(smem_u32(sK + dst), k_src, ok);
        cp_async_16(smem_u32(sV + dst), v_src, ok);
    }
}

// S[mt][nt] = Q K^T for the CTA's rows and one key tile (both operands from swizzled shared memory; every
// row a lane addresses is congruent to lane & 7 mod 8, so one XOR per k-step finds the swizzled chunk).
template <typename T, typename S, int D>
__device__ __forceinline__ void decode_qk(float (&s)[S::kMTiles][S::kNTiles][4], const T* sQ, const T* sK,
                                          int lane) {
    const int q_row = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int q_x = (lane >> 4) ^ (lane & 7);
    const uint32_t q_base = smem_u32(sQ + q_row * D);
    const int k_row = (lane & 7) + (lane >> 4) * 8;
    const int k_x = ((lane >> 3) & 1) ^ (lane & 7);
    const uint32_t k_base = smem_u32(sK + k_row * D);
#pragma unroll
    for (int kk = 0; kk < S::kKStepsQK; ++kk) {
        uint32_t a[S::kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < S::kMTiles; ++mt) ldmatrix_x4(a[mt], q_base + (mt * 16 * D + (((2 * kk) ^ q_x) << 3)) * 2);
#pragma unroll
        for (int np = 0; np < S::kNTiles / 2; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, k_base + (np * 16 * D + (((2 * kk) ^ k_x) << 3)) * 2);
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt) {
                mma_16x8x16<T>(s[mt][2 * np], a[mt], b[0], b[1]);
                mma_16x8x16<T>(s[mt][2 * np + 1], a[mt], b[2], b[3]);
            }
        }
    }
}

// O[mt][dt] += P V for one key tile; P is the softmax output repacked into A fragments.
template <typename T, typename S, int D>
__device__ __forceinline__ void decode_pv(float (&o)[S::kMTiles][S::kDTiles][4],
                                          const uint32_t (&pf)[S::kMTiles][S::kKStepsPV][4], const T* sV, int lane) {
    const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int v_x = (lane >> 4) ^ (lane & 7);
    const uint32_t v_base = smem_u32(sV + v_row * D);
#pragma unroll
    for (int ks = 0; ks < S::kKStepsPV; ++ks) {
#pragma unroll
        for (int dp = 0; dp < S::kDTiles / 2; ++dp) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, v_base + (ks * 16 * D + (((2 * dp) ^ v_x) << 3)) * 2);
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt) {
                mma_16x8x16<T>(o[mt][2 * dp], pf[mt][ks], b[0], b[1]);
                mma_16x8x16<T>(o[mt][2 * dp + 1], pf[mt][ks], b[2], b[3]);
            }
        }
    }
}

// Online softmax of one tile, row by row (a lane holds rows g and g + 8 of each m-tile, in quads).
template <typename T, typename S>
__device__ __forceinline__ void decode_softmax(float (&s)[S::kMTiles][S::kNTiles][4],
                                               float (&o)[S::kMTiles][S::kDTiles][4], float (&row_max)[S::kMTiles][2],
                                               float (&row_sum)[S::kMTiles][2],
                                               uint32_t (&pf)[S::kMTiles][S::kKStepsPV][4], float scale_log2) {
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            float tile_max = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt)
                tile_max = fmaxf(tile_max, fmaxf(s[mt][nt][2 * hh], s[mt][nt][2 * hh + 1]));
            const float new_max = fmaxf(row_max[mt][hh], quad_max(tile_max));
            // Rows masked so far keep a -inf max: subtract 0 then, so exp2 gives 0 rather than NaN.
            const float shift = new_max == -INFINITY ? 0.f : new_max * scale_log2;
            const float rescale = exp2f(row_max[mt][hh] * scale_log2 - shift);
            row_max[mt][hh] = new_max;
            float tile_sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt) {
                s[mt][nt][2 * hh] = exp2f(fmaf(s[mt][nt][2 * hh], scale_log2, -shift));
                s[mt][nt][2 * hh + 1] = exp2f(fmaf(s[mt][nt][2 * hh + 1], scale_log2, -shift));
                tile_sum += s[mt][nt][2 * hh] + s[mt][nt][2 * hh + 1];
            }
            row_sum[mt][hh] = row_sum[mt][hh] * rescale + tile_sum;
#pragma unroll
            for (int dt = 0; dt < S::kDTiles; ++dt) {
                o[mt][dt][2 * hh] *= rescale;
                o[mt][dt][2 * hh + 1] *= rescale;
            }
        }
#pragma unroll
        for (int ks = 0; ks < S::kKStepsPV; ++ks) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                pf[mt][ks][2 * half] = ElemTraits<T>::pack(s[mt][2 * ks + half][0], s[mt][2 * ks + half][1]);
                pf[mt][ks][2 * half + 1] = ElemTraits<T>::pack(s[mt][2 * ks + half][2], s[mt][2 * ks + half][3]);
            }
        }
    }
}

// ---- the kernels ---------------------------------------------------------------------------------
// Copies k_new / v_new into the cache at positions cache_seqlens[bi] + j. Grid (seqlen_new, b).
template <typename T, int D>
__global__ void __launch_bounds__(128) flash_decode_append_kernel(const __grid_constant__ DecodeParams p) {
    constexpr int kChunks = D / 8;
    const int j = blockIdx.x;
    const int bi = blockIdx.y;
    const int cached = p.cache_seqlens != nullptr ? p.cache_seqlens[bi] : p.cache_seqlen_fixed;
    const int key = max(cached, 0) + j;
    if (key >= p.seqlen_k_bound) return;  // past the cache's capacity: nothing is written out of bounds
    const int cache_b = p.cache_batch_idx != nullptr ? p.cache_batch_idx[bi] : bi;
    const int64_t k_base = (p.block_table != nullptr ? 0 : cache_b * p.k_batch_stride) +
                           cache_row_offset(p, bi, key, p.k_batch_stride, p.k_row_stride);
    const int64_t v_base = (p.block_table != nullptr ? 0 : cache_b * p.v_batch_stride) +
                           cache_row_offset(p, bi, key, p.v_batch_stride, p.v_row_stride);
    const T* kn = static_cast<const T*>(p.k_new) + bi * p.kn_batch_stride + j * p.kn_row_stride;
    const T* vn = static_cast<const T*>(p.v_new) + bi * p.vn_batch_stride + j * p.vn_row_stride;
    T* kc = static_cast<T*>(p.k_cache) + k_base;
    T* vc = static_cast<T*>(p.v_cache) + v_base;
    for (int idx = threadIdx.x; idx < p.h_k * kChunks; idx += blockDim.x) {
        const int hh = idx / kChunks;
        const int c = (idx % kChunks) * 8;
        *reinterpret_cast<uint4*>(kc + hh * p.k_head_stride + c) =
            *reinterpret_cast<const uint4*>(kn + hh * p.kn_head_stride + c);
        *reinterpret_cast<uint4*>(vc + hh * p.v_head_stride + c) =
            *reinterpret_cast<const uint4*>(vn + hh * p.vn_head_stride + c);
    }
}

// Grid (row tiles * num_splits, h_k, b), kWarps warps per CTA.
template <typename T, int D, int MT>
__global__ void __launch_bounds__(DecodeShape<D, MT>::kThreads) flash_decode_kernel(const __grid_constant__ DecodeParams p) {
    using S = DecodeShape<D, MT>;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sKV = sQ + S::kBlockM * D;  // slot j: K at sKV + 2 j tiles, V right after it

    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int split = blockIdx.x % p.num_splits;
    const int m_block = blockIdx.x / p.num_splits;
    const int hk = blockIdx.y;
    const int bi = blockIdx.z;
    const int group = p.h / p.h_k;
    const int r_begin = m_block * S::kBlockM;
    const int rows_here = min(S::kBlockM, p.seqlen_q * group - r_begin);
    const int sk = decode_seqlen_k(p, bi);
    const int pos_offset = sk - p.seqlen_q;  // new token i sits at key position i + pos_offset

    // The keys any row of this tile may see: [kv_lo, kv_hi).
    const int right = p.is_causal ? (p.window_right < 0 ? 0 : min(p.window_right, 0)) : p.window_right;
    const int left = p.window_left;
    const int first_pos = r_begin / group + pos_offset;
    const int last_pos = (r_begin + rows_here - 1) / group + pos_offset;
    const int kv_lo = left >= 0 ? max(0, first_pos - left) : 0;
    const int kv_hi = right >= 0 ? min(sk, last_pos + right + 1) : sk;
    const int n_tiles = kv_hi > kv_lo ? (kv_hi - kv_lo + S::kTileN - 1) / S::kTileN : 0;
    const int per_split = (n_tiles + p.num_splits - 1) / p.num_splits;
    const int t_begin = min(n_tiles, split * per_split);
    const int t_end = min(n_tiles, t_begin + per_split);

    const int cache_b = p.cache_batch_idx != nullptr ? p.cache_batch_idx[bi] : bi;
    const int64_t batch_k = p.block_table != nullptr ? 0 : cache_b * p.k_batch_stride;
    const int64_t batch_v = p.block_table != nullptr ? 0 : cache_b * p.v_batch_stride;
    const T* k_head = static_cast<const T*>(p.k_cache) + batch_k + hk * p.k_head_stride;
    const T* v_head = static_cast<const T*>(p.v_cache) + batch_v + hk * p.v_head_stride;

    // Q rows (token r / group, head hk * group + r % group), zero-filled past the last row.
    const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride;
    for (int idx = tid; idx < S::kBlockM * S::kChunks; idx += S::kThreads) {
        const int r = idx / S::kChunks;
        const int c = idx % S::kChunks;
        const bool ok = r < rows_here;
        const T* src = q;
        if (ok) {
            const int rg = r_begin + r;
            src += (rg / group) * p.q_row_stride + (hk * group + rg % group) * p.q_head_stride + c * 8;
        }
        cp_async_16(smem_u32(sQ + swizzled_offset<D>(r, c)), src, ok);
    }

    // Each lane's rows (g and g + 8 of each m-tile) as key positions, for the mask.
    int row_pos[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) row_pos[mt][hh] = (r_begin + mt * 16 + (lane >> 2) + hh * 8) / group + pos_offset;

    float acc_o[MT][S::kDTiles][4];
    float row_max[MT][2], row_sum[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int dt = 0; dt < S::kDTiles; ++dt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc_o[mt][dt][i] = 0.f;
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }

    // Pipeline: tiles t_begin .. t_begin + kStages - 2 are requested up front (one commit group each, empty
    // groups past the end keep the count uniform); each iteration waits for its tile, requests the tile
    // kStages - 1 ahead into the slot computed last iteration, and computes its warp's slice.
    auto slot_k = [&](int t) { return sKV + ((t - t_begin) % S::kStages) * 2 * S::kTileElems; };
#pragma unroll
    for (int i = 0; i < S::kStages - 1; ++i) {
        const int t = t_begin + i;
        if (t < t_end) load_kv_tile<T, S>(slot_k(t), slot_k(t) + S::kTileElems, k_head, v_head, p, bi,
                                          kv_lo + t * S::kTileN, kv_hi, tid);
        cp_async_commit();  // the first group also holds Q
    }

    for (int t = t_begin; t < t_end; ++t) {
        cp_async_wait<S::kStages - 2>();
        __syncthreads();  // tile t visible to every thread; every warp is done with the slot refilled next
        const int ahead = t + S::kStages - 1;
        if (ahead < t_end) load_kv_tile<T, S>(slot_k(ahead), slot_k(ahead) + S::kTileElems, k_head, v_head, p, bi,
                                              kv_lo + ahead * S::kTileN, kv_hi, tid);
        cp_async_commit();
        const int col0 = kv_lo + t * S::kTileN + warp * S::kBlockN;  // this warp's slice of the tile
        if (col0 >= kv_hi) continue;  // the last tile may end before this warp's slice
        const T* sK = slot_k(t) + warp * S::kBlockN * D;
        const T* sV = slot_k(t) + S::kTileElems + warp * S::kBlockN * D;

        float acc_s[MT][S::kNTiles][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc_s[mt][nt][i] = 0.f;
        decode_qk<T, S, D>(acc_s, sQ, sK, lane);

        // Mask only slices that cross the end, the causal / right-window edge or the left-window edge.
        const bool cross_end = col0 + S::kBlockN > kv_hi;
        const bool cross_right = right >= 0 && col0 + S::kBlockN - 1 > first_pos + right;
        const bool cross_left = left >= 0 && col0 < last_pos - left;
        if (cross_end || cross_right || cross_left) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const int pos = row_pos[mt][i >> 1];
                        const int col = col0 + nt * 8 + (lane & 3) * 2 + (i & 1);
                        const bool masked = col >= kv_hi || (right >= 0 && col > pos + right) ||
                                            (left >= 0 && col < pos - left);
                        if (masked) acc_s[mt][nt][i] = -INFINITY;
                    }
        }

        uint32_t pf[MT][S::kKStepsPV][4];
        decode_softmax<T, S>(acc_s, acc_o, row_max, row_sum, pf, p.scale_softmax_log2);
        decode_pv<T, S, D>(acc_o, pf, sV, lane);
    }
    cp_async_wait<0>();
    __syncthreads();  // the K/V slots now take the warps' rows

    // Each warp parks its rows, normalised by its own sum, and their LSE (-inf: no key in this warp's slices).
    float* sO = reinterpret_cast<float*>(sKV);            // [kWarps][kBlockM][D]
    float* sLse = sO + S::kWarps * S::kBlockM * D;        // [kWarps][kBlockM]
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const float total = quad_sum(row_sum[mt][hh]);
            const int r = mt * 16 + g + hh * 8;
            const bool empty = !(total > 0.f);
            const float inv = empty ? 0.f : 1.f / total;
            float* o = sO + (warp * S::kBlockM + r) * D;
#pragma unroll
            for (int dt = 0; dt < S::kDTiles; ++dt)
                *reinterpret_cast<float2*>(o + dt * 8 + 2 * t4) =
                    make_float2(acc_o[mt][dt][2 * hh] * inv, acc_o[mt][dt][2 * hh + 1] * inv);
            if (t4 == 0) sLse[warp * S::kBlockM + r] = empty ? -INFINITY : row_max[mt][hh] * p.scale_softmax + logf(total);
        }
    }
    __syncthreads();

    // Merge the warps: lse = log sum exp(lse_w), row = sum exp(lse_w - lse) row_w; then to out / lse (one
    // split) or to the fp32 partials. Two columns per thread.
    const int64_t rows_out = static_cast<int64_t>(p.b) * p.h * p.seqlen_q;
    for (int idx = tid; idx < rows_here * (D / 2); idx += S::kThreads) {
        const int r = idx / (D / 2);
        const int c = (idx % (D / 2)) * 2;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < S::kWarps; ++w) mx = fmaxf(mx, sLse[w * S::kBlockM + r]);
        float lse = -INFINITY, o0 = 0.f, o1 = 0.f;
        if (mx != -INFINITY) {
            float sum = 0.f;
#pragma unroll
            for (int w = 0; w < S::kWarps; ++w) sum += expf(sLse[w * S::kBlockM + r] - mx);
            lse = mx + logf(sum);
#pragma unroll
            for (int w = 0; w < S::kWarps; ++w) {
                const float wt = expf(sLse[w * S::kBlockM + r] - lse);
                const float2 v = *reinterpret_cast<const float2*>(sO + (w * S::kBlockM + r) * D + c);
                o0 = fmaf(wt, v.x, o0);
                o1 = fmaf(wt, v.y, o1);
            }
        }
        const int rg = r_begin + r;
        const int tok = rg / group;
        const int hq = hk * group + rg % group;
        const int64_t out_row = (static_cast<int64_t>(bi) * p.h + hq) * p.seqlen_q + tok;
        if (p.num_splits == 1) {
            T* o = static_cast<T*>(p.out) + bi * p.o_batch_stride + tok * p.o_row_stride + hq * p.o_head_stride;
            *reinterpret_cast<uint32_t*>(o + c) = ElemTraits<T>::pack(o0, o1);
            if (c == 0) p.lse[out_row] = lse;
        } else {
            const int64_t part_row = split * rows_out + out_row;
            *reinterpret_cast<float2*>(p.out_accum + part_row * D + c) = make_float2(o0, o1);
            if (c == 0) p.lse_accum[part_row] = lse;
        }
    }
}

// Merges the splits' partials: one warp per output row (bi, hq, token). Grid ceil(rows / 4), 128 threads.
template <typename T, int D>
__global__ void __launch_bounds__(128) flash_decode_combine_kernel(const __grid_constant__ DecodeParams p) {
    constexpr int kPerLane = D / 32;
    const int64_t rows = static_cast<int64_t>(p.b) * p.h * p.seqlen_q;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float mx = -INFINITY;
    for (int s = lane; s < p.num_splits; s += 32) mx = fmaxf(mx, p.lse_accum[s * rows + row]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.f;
    if (mx != -INFINITY)
        for (int s = lane; s < p.num_splits; s += 32) sum += expf(p.lse_accum[s * rows + row] - mx);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const bool empty = mx == -INFINITY || !(sum > 0.f);
    const float lse = empty ? -INFINITY : mx + logf(sum);

    float acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = 0.f;
    if (!empty) {
        for (int s = 0; s < p.num_splits; ++s) {
            const float ls = p.lse_accum[s * rows + row];
            if (ls == -INFINITY) continue;  // same value for the whole warp: no divergence
            const float w = expf(ls - lse);
            const float* o = p.out_accum + (s * rows + row) * D + lane * kPerLane;
#pragma unroll
            for (int j = 0; j < kPerLane; ++j) acc[j] = fmaf(w, o[j], acc[j]);
        }
    }
    const int tok = static_cast<int>(row % p.seqlen_q);
    const int hq = static_cast<int>((row / p.seqlen_q) % p.h);
    const int bi = static_cast<int>(row / (static_cast<int64_t>(p.seqlen_q) * p.h));
    T* out = static_cast<T*>(p.out) + bi * p.o_batch_stride + tok * p.o_row_stride + hq * p.o_head_stride +
             lane * kPerLane;
#pragma unroll
    for (int j = 0; j < kPerLane; j += 2)
        *reinterpret_cast<uint32_t*>(out + j) = ElemTraits<T>::pack(acc[j], acc[j + 1]);
    if (lane == 0) p.lse[row] = lse;
}

// ---- launcher ------------------------------------------------------------------------------------
// Rows of one (batch, K/V head): the new tokens times the query heads of the group. More than 16 take two
// MMA tiles per CTA (32 rows), so MQA's 32 heads read the cache once.
inline int decode_rows(const DecodeParams& p) { return p.seqlen_q * (p.h / p.h_k); }
inline int decode_mtiles(const DecodeParams& p) { return decode_rows(p) > 16 ? 2 : 1; }

// The kernel for (T, D, MT), allowed its dynamic shared memory (once per process: one device kind).
template <typename T, int D, int MT>
auto decode_kernel() {
    static const bool ready = [] {
        using S = DecodeShape<D, MT>;
        if (S::kSmemBytes > 48 * 1024)
            cudaFuncSetAttribute(flash_decode_kernel<T, D, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 S::kSmemBytes);
        return true;
    }();
    (void)ready;
    return flash_decode_kernel<T, D, MT>;
}

template <typename T, int D, int MT>
int decode_ctas_per_sm() {
    static const int cached = [] {
        using S = DecodeShape<D, MT>;
        int n = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_kernel<T, D, MT>(), S::kThreads, S::kSmemBytes) !=
                cudaSuccess ||
            n < 1) {
            (void)cudaGetLastError();
            n = 1;
        }
        return n;
    }();
    return cached;
}

template <typename T, int D>
int flash_decode_num_splits(const DecodeParams& p, int num_sms) {
    const int mt = decode_mtiles(p);
    const int block_m = 16 * mt;
    const int tile_n = mt == 1 ? DecodeShape<D, 1>::kTileN : DecodeShape<D, 2>::kTileN;
    const int64_t base = static_cast<int64_t>(p.b) * p.h_k * ((decode_rows(p) + block_m - 1) / block_m);
    const int64_t wave = static_cast<int64_t>(num_sms) * (mt == 1 ? decode_ctas_per_sm<T, D, 1>()
                                                                  : decode_ctas_per_sm<T, D, 2>());
    // A split should stream enough keys that its fixed costs (Q, the partial it writes) stay small.
    const int split_keys = std::max(BRIDGE_DECODE_SPLIT_KEYS, tile_n);
    const int max_by_len = (p.seqlen_k_bound + split_keys - 1) / split_keys;
    const int max_splits = static_cast<int>(std::min<int64_t>(128, std::max(1, max_by_len)));
    if (base >= wave || max_splits == 1) return 1;
    // Wave efficiency of s splits: the last wave's fill. Take the fewest splits within 85% of the best.
    auto efficiency = [&](int s) {
        const double waves = static_cast<double>(base * s) / static_cast<double>(wave);
        return waves / std::ceil(waves);
    };
    double best = 0.0;
    for (int s = 1; s <= max_splits; ++s) best = std::max(best, efficiency(s));
    for (int s = 1; s <= max_splits; ++s)
        if (efficiency(s) >= 0.85 * best) return s;
    return max_splits;
}

template <typename T, int D, int MT>
void launch_decode_attention(const DecodeParams& p, cudaStream_t stream) {
    using S = DecodeShape<D, MT>;
    const int m_blocks = (decode_rows(p) + S::kBlockM - 1) / S::kBlockM;
    const dim3 grid(m_blocks * p.num_splits, p.h_k, p.b);
    auto kernel = decode_kernel<T, D, MT>();
    kernel<<<grid, S::kThreads, S::kSmemBytes, stream>>>(p);
}

template <typename T, int D>
void run_flash_decode(const DecodeParams& p, cudaStream_t stream) {
    if (p.b == 0 || p.seqlen_q == 0) return;
    if (p.k_new != nullptr && p.seqlen_new > 0)
        flash_decode_append_kernel<T, D><<<dim3(p.seqlen_new, p.b), 128, 0, stream>>>(p);
    if (decode_mtiles(p) == 1) {
        launch_decode_attention<T, D, 1>(p, stream);
    } else {
        launch_decode_attention<T, D, 2>(p, stream);
    }
    if (p.num_splits > 1) {
        const int64_t rows = static_cast<int64_t>(p.b) * p.h * p.seqlen_q;
        flash_decode_combine_kernel<T, D><<<static_cast<unsigned>((rows + 3) / 4), 128, 0, stream>>>(p);
    }
}

}  // namespace bridge_flash

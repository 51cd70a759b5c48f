// The band of keys each query row may see (causal and sliding-window masking), shared by the mma.sync forward
// and backward: the per-element test and which tiles of the (query, key) grid hold admissible scores at all.
// Every tile outside the band is skipped, so with a fixed window the work grows linearly with the sequence.
//
// Coordinates are per sequence: query row r, key column c, diag = sk - sq (bottom-right alignment). Row r sees
// c iff r + diag - left <= c <= r + diag + right, with left / right from FwdParams::window_left / window_right
// (never negative: unbounded sides arrive as widths no sequence reaches, see flash_params.h).
#pragma once

namespace bridge_flash {

struct Band {
    int diag, left, right;

    // Two forms of one test, because ptxas allocates them differently: the single unsigned comparison
    // (col - (row + diag - left) lies in [0, left + right] exactly inside the band) keeps the backward at its
    // old spill count, the two comparisons the d = 64 forward (measured with -Xptxas=-v, NOTES.md).
    __device__ __forceinline__ bool masked(int row, int col) const {
        return static_cast<unsigned>(col - (row + diag - left)) > static_cast<unsigned>(left + right);
    }
    __device__ __forceinline__ bool masked_2cmp(int row, int col) const {
        return col > row + diag + right || col < row + diag - left;
    }

    // Does a tile of rows [r0, r1] x columns [c0, c1] (inclusive) contain a score outside the band? Such
    // tiles need the per-element mask; the others are inside the band for every element.
    __device__ __forceinline__ bool crosses(int r0, int r1, int c0, int c1) const {
        return c1 > r0 + diag + right || c0 < r1 + diag - left;
    }

    // Key tiles of width bn holding an admissible score for rows [r0, r1]: [*first, *end), clipped to the
    // n_tiles tiles of the sequence (empty when first >= end).
    __device__ __forceinline__ void key_tiles(int r0, int r1, int bn, int n_tiles, int& first, int& end) const {
        const int lo = r0 + diag - left;   // leftmost column any row sees
        const int hi = r1 + diag + right;  // rightmost column any row sees
        first = lo > 0 ? lo / bn : 0;
        end = hi < 0 ? 0 : min(n_tiles, hi / bn + 1);
    }

    // Query tiles of height bm that key tile [c0, c0 + bn) serves, counting every tile as full (bm rows):
    // [*first, *end), clipped to the m_tiles tiles of the sequence. The backward's deterministic mode needs
    // the relation symmetric with first_key_tile below, so neither side looks at actual tile heights.
    __device__ __forceinline__ void query_tiles(int c0, int bn, int bm, int m_tiles, int& first, int& end) const {
        const int lo = c0 - diag - right;            // query tiles ending before row lo see none of the keys
        const int hi = c0 + bn - 1 - diag + left;    // query tiles starting after row hi see none either
        first = lo > 0 ? lo / bm : 0;
        end = hi < 0 ? 0 : min(m_tiles, hi / bm + 1);
    }

    // The first key tile (width bn) that serves query tile m0 (height bm) in query_tiles' relation.
    __device__ __forceinline__ int first_key_tile(int m0, int bn) const {
        const int lo = m0 + diag - left;
        return lo > 0 ? lo / bn : 0;
    }
};

}  // namespace bridge_flash

"""An independent float64 attention reference for the backend tests (written per element, not per mask kind)."""

import math

import torch


def reference_attention(q, k, v, allowed, scale=None):
    """q [sq, b, h, d], k/v [sk, b, g, d]; allowed [b, sq, sk] bool or None -> [sq, b, h, d] float64.

    Rows with no allowed key are zero.
    """
    sq, b, h, d = q.shape
    sk, g = k.shape[0], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(sq, b, h, d, dtype=torch.float64)
    q64, k64, v64 = q.double(), k.double(), v.double()
    for bi in range(b):
        for hi in range(h):
            kv = hi // (h // g)
            scores = q64[:, bi, hi] @ k64[:, bi, kv].T * scale  # (sq, sk)
            if allowed is not None:
                scores = scores.masked_fill(~allowed[bi], float("-inf"))
            rows = torch.isfinite(scores).any(dim=1)
            probs = torch.zeros_like(scores)
            probs[rows] = torch.softmax(scores[rows], dim=1)
            out[:, bi, hi] = probs @ v64[:, bi, kv]
    return out


def causal_allowed(b, sq, sk):
    rows = torch.arange(sq)[:, None]
    cols = torch.arange(sk)[None, :]
    return (cols <= rows + sk - sq).expand(b, sq, sk)

"""auto's measured speed rule: every table row decides auto's choice, and the debug log says why."""

import json
import logging
from pathlib import Path

import pytest
import torch

from bridge.attention import AttentionInputs, measured, select_backend, selection, speed_table
from bridge.models import AttnBackend

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def on_gpu(monkeypatch):
    """A CUDA device of compute capability 9.0 on which flash and fused both support every input."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    measured.device_arch.cache_clear()
    for backend in (AttnBackend.flash, AttnBackend.fused):
        monkeypatch.setitem(selection._CHECKS, backend, lambda inputs: None)
    for var in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN", "NVTE_DEBUG", "NVTE_DEBUG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    yield
    measured.device_arch.cache_clear()


def _inputs(head_dim, mask, length):
    return AttentionInputs(device_type="cuda", dtype=torch.bfloat16, head_dim=head_dim, num_heads=16,
                           num_kv_heads=16, dropout_p=0.0, mask_kind=mask, seqlen_q=length, seqlen_k=length)


def _band_lengths(row):
    """The first and last length of the row's band."""
    upper = [r.min_len for r in measured.ROWS if (r.arch, r.head_dim, r.mask) == (row.arch, row.head_dim, row.mask)
             and r.min_len > row.min_len]
    return row.min_len or 1, (min(upper) - 1 if upper else 4 * row.min_len)


def test_table_matches_its_committed_evidence():
    evidence = json.loads((REPO_ROOT / speed_table.SOURCE).read_text())
    rules = [(r["arch"], r["head_dim"], r["mask"], r["min_len"], r["faster"], r["ratio"]) for r in evidence["rules"]]
    assert rules == [tuple(row) for row in speed_table.ROWS]
    for rule in evidence["rules"]:
        flash, fused = rule["flash_tflops"], rule["fused_tflops"]
        assert rule["faster"] == ("flash" if flash >= fused else "fused")
        assert rule["ratio"] == pytest.approx(max(flash, fused) / min(flash, fused), abs=0.01)


def test_every_band_starts_at_zero_and_is_unique():
    keys = {(r.arch, r.head_dim, r.mask) for r in measured.ROWS}
    assert keys, "the speed table has no rows"
    for key in keys:
        starts = sorted(r.min_len for r in measured.ROWS if (r.arch, r.head_dim, r.mask) == key)
        assert starts[0] == 0 and len(starts) == len(set(starts))
    assert all(r.faster in ("flash", "fused") and r.ratio >= 1.0 for r in measured.ROWS)


@pytest.mark.parametrize("row", measured.ROWS, ids=lambda r: f"{r.arch}-d{r.head_dim}-{r.mask}-{r.min_len}")
def test_auto_picks_the_measured_faster_backend(on_gpu, row):
    if row.arch != "sm90":
        pytest.skip("the mocked GPU is sm90")
    for length in _band_lengths(row):
        assert measured.lookup("sm90", _inputs(row.head_dim, row.mask, length)) == row
        assert select_backend(AttnBackend.auto, _inputs(row.head_dim, row.mask, length)) is AttnBackend(row.faster)


def test_debug_log_says_why(on_gpu, monkeypatch, caplog):
    row = measured.ROWS[0]
    monkeypatch.setenv("NVTE_DEBUG", "1")
    with caplog.at_level(logging.DEBUG, logger="bridge.attention"):
        select_backend(AttnBackend.auto, _inputs(row.head_dim, row.mask, _band_lengths(row)[0]), "gpt layer 1 (self attention)")
    (line,) = [r.getMessage() for r in caplog.records]
    mask = "causal" if row.mask == "causal" else "non-causal"
    lo, hi = _band_lengths(row)
    expected = (f"gpt layer 1 (self attention): running {row.faster} (auto); {row.faster}: {row.ratio:.2f}x faster "
                f"than {row.slower} on sm90 for d={row.head_dim} {mask}, length {row.min_len}-{hi} "
                f"(fwd+bwd, per benchmarks/results/backend_speed.json)")
    assert line == expected


def test_measured_faster_backend_ruled_out_falls_back(on_gpu, monkeypatch):
    row = measured.ROWS[0]
    monkeypatch.setenv(selection.ENV_SWITCHES[AttnBackend(row.faster)], "0")
    assert select_backend(AttnBackend.auto, _inputs(row.head_dim, row.mask, 2048)) is AttnBackend(row.slower)


@pytest.mark.parametrize("arch, mask, head_dim", [("sm80", "causal", 64), ("sm90", "padding", 64), ("sm90", "none", 96)])
def test_unmeasured_inputs_keep_the_fixed_order(arch, mask, head_dim):
    order, why = measured.auto_order(_inputs(head_dim, mask, 2048), selection.AUTO_ORDER, arch=arch)
    assert order == selection.AUTO_ORDER
    assert why == f"fixed order flash > fused > local (no speed measurement for {arch}, d={head_dim}, mask={mask})"


def test_the_longer_length_picks_the_band():
    row = max((r for r in measured.ROWS if r.arch == "sm90" and r.head_dim == 128 and r.mask == "none"),
              key=lambda r: r.min_len)
    cross = AttentionInputs("cuda", torch.bfloat16, 128, 16, 16, 0.0, "none", seqlen_q=128, seqlen_k=row.min_len)
    assert measured.lookup("sm90", cross) == row


@pytest.mark.gpu
def test_auto_follows_the_table_on_this_gpu():
    """On a real GPU: for each row of its architecture, auto runs the measured faster backend (when both run)."""
    arch = measured.device_arch(torch.cuda.current_device())
    rows = [r for r in measured.ROWS if r.arch == arch]
    if not rows:
        pytest.skip(f"nothing measured for {arch}")
    for row in rows:
        inputs = _inputs(row.head_dim, row.mask, _band_lengths(row)[0])
        if selection.ruled_out_reason(AttnBackend.flash, inputs) or selection.ruled_out_reason(AttnBackend.fused, inputs):
            continue
        assert select_backend(AttnBackend.auto, inputs) is AttnBackend(row.faster)

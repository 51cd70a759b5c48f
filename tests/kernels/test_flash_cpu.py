"""CPU tests of the flash-kernel package: cheap import, clear refusals where the kernel cannot run."""

from __future__ import annotations

import subprocess
import sys

from pathlib import Path

import pytest
import torch

import bridge.kernels as kernels
from bridge.kernels import build, flash_attn_func, flash_attn_varlen_func, interface, unavailable_reason

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


@pytest.fixture(autouse=True)
def _fresh_gpu_check_cache():
    # unavailable_reason caches the per-GPU architecture check; tests below fake different GPUs.
    interface._gpu_reason.cache_clear()
    yield
    interface._gpu_reason.cache_clear()


def test_import_does_not_build_or_load_the_extension():
    code = (
        "import sys, bridge.kernels; "
        "assert 'torch.utils.cpp_extension' not in sys.modules, 'import pulled in the extension builder'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_no_cuda
def test_unavailable_reason_explains_cpu():
    reason = unavailable_reason()
    assert reason is not None and "CUDA" in reason
    assert "CUDA GPU" in unavailable_reason(device="cpu")


def test_unavailable_reason_names_bad_dtype_and_head_dim_on_cuda_devices(monkeypatch):
    # Pretend a supported GPU is present, so the dtype / head-dim checks are reached without one.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(build, "toolchain_missing_reason", lambda: None)
    assert unavailable_reason("cuda:0", torch.bfloat16, 128) is None
    assert "torch.float32" in unavailable_reason("cuda:0", torch.float32, 64)
    reason = unavailable_reason("cuda:0", torch.float16, 96)
    assert "96" in reason and "64, 128" in reason


def test_unavailable_reason_names_both_gpu_archs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    reason = unavailable_reason("cuda:0")
    assert "Tesla T4" in reason and "sm_75" in reason and "sm_90" in reason


def test_unavailable_reason_names_missing_nvcc(monkeypatch):
    monkeypatch.setattr(build, "_loaded", False)
    monkeypatch.setattr(build, "is_built", lambda: False)
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    assert "nvcc" in build.toolchain_missing_reason()


@needs_no_cuda
def test_public_functions_refuse_cpu_tensors_clearly():
    q = torch.randn(1, 8, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="flash_attn_func: .*CUDA GPU"):
        flash_attn_func(q, q, q)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="flash_attn_varlen_func: .*CUDA GPU"):
        flash_attn_varlen_func(q[0], q[0], q[0], cu, cu, 8, 8)


def test_public_functions_reject_dropout_and_bad_ranks():
    q = torch.randn(1, 8, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dropout_p=0.1 is not supported"):
        flash_attn_func(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"q must be \[batch, seqlen, heads, head_dim\]"):
        flash_attn_func(q[0], q[0], q[0])


def test_build_sources_cover_every_translation_unit():
    names = {p.name for p in build.sources()}
    assert "flash_api_fwd.cpp" in names
    assert {"flash_fwd_bf16_hd64.cu", "flash_fwd_bf16_hd128.cu", "flash_fwd_fp16_hd64.cu",
            "flash_fwd_fp16_hd128.cu"} <= names


def test_target_archs_reject_unknown(monkeypatch):
    monkeypatch.setenv("BRIDGE_FLASH_ARCHS", "90a,75")
    with pytest.raises(ValueError, match="unsupported target '75'"):
        build.target_archs()
    monkeypatch.setenv("BRIDGE_FLASH_ARCHS", "90a,80")
    assert (8, 0) in build.supported_capabilities() and (9, 0) in build.supported_capabilities()


def test_package_exports_public_names():
    assert set(kernels.__all__) >= {"flash_attn_func", "flash_attn_varlen_func", "unavailable_reason"}


def test_generated_wgmma_header_is_up_to_date():
    # csrc/flash_sm90_wgmma.cuh is generated; an edit to either side without regenerating fails here.
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen_wgmma", root / "scripts" / "gen_wgmma.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    header = root / "bridge" / "kernels" / "csrc" / "flash_sm90_wgmma.cuh"
    assert header.read_text() == gen.render(), "run `python scripts/gen_wgmma.py` and commit the header"
    assert "m64n128k16" in header.read_text()


def test_every_launcher_has_an_instantiation_per_dtype_and_head_dim():
    from pathlib import Path

    inst = Path(build.CSRC_DIR) / "instantiations"
    names = {p.stem for p in inst.glob("*.cu")}
    for kind in ("fwd", "bwd", "fwd_sm90", "bwd_sm90"):
        for dtype in ("bf16", "fp16"):
            for d in build.HEAD_DIMS:  # the one table of head dims
                assert f"flash_{kind}_{dtype}_hd{d}" in names


def test_head_dims_have_one_source():
    from bridge.kernels import SUPPORTED_HEAD_DIMS

    assert SUPPORTED_HEAD_DIMS is build.HEAD_DIMS
    assert "-DBRIDGE_FLASH_HEAD_DIMS=" + ",".join(map(str, build.HEAD_DIMS)) in build.binding_cflags()


def test_compile_check_uses_the_builders_nvcc_flags():
    root = Path(__file__).resolve().parents[2]
    printed = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-m", "bridge.kernels.build", "--nvcc-flags"],
                             cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert printed == build.nvcc_flags()
    assert "-gencode=arch=compute_90a,code=sm_90a" in printed
    script = (root / "scripts" / "compile_kernels.sh").read_text()
    assert "-m bridge.kernels.build --nvcc-flags" in script and "-gencode" not in script


@pytest.mark.parametrize("env, capability, family", [
    (None, (9, 0), "sm90"), ("auto", (9, 0), "sm90"), ("sm90", (9, 0), "sm90"), ("mma", (9, 0), "mma"),
    (None, (8, 0), "mma"), ("sm90", (8, 9), "mma"),
])
def test_kernel_family_is_chosen_in_python(monkeypatch, env, capability, family):
    if env is None:
        monkeypatch.delenv("BRIDGE_FLASH_IMPL", raising=False)
    else:
        monkeypatch.setenv("BRIDGE_FLASH_IMPL", env)
    monkeypatch.setattr(interface, "_capability", lambda index: capability)
    monkeypatch.setattr(interface, "_gpu_reason", lambda index: None)  # a GPU the kernel was built for
    assert interface.kernel_family(torch.device("cuda", 0)) == family


def test_every_kernel_call_refuses_a_gpu_the_kernel_was_not_built_for(monkeypatch):
    """The one architecture check (the binding has none): kernel_family runs on every forward and backward call."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(RuntimeError, match=r"^bridge flash: GPU Tesla T4 is sm_75, but the flash kernel supports sm_90"):
        interface.kernel_family(torch.device("cuda", 0))
    assert "check_arch" not in (Path(build.CSRC_DIR) / "flash_api_common.cpp").read_text()


def test_bad_kernel_family_is_one_readable_line(monkeypatch):
    monkeypatch.setenv("BRIDGE_FLASH_IMPL", "fast")
    with pytest.raises(ValueError, match=r"^BRIDGE_FLASH_IMPL='fast' is not valid; use auto, sm90 or mma$"):
        interface.kernel_family(torch.device("cuda", 0))


def test_the_binding_reads_no_environment():
    csrc = Path(build.CSRC_DIR)
    for source in list(csrc.glob("*.cpp")) + list(csrc.glob("*.h")):
        assert "getenv" not in source.read_text(), source.name


def test_public_signatures_follow_flash_attn_2():
    # A positional flash-attn 2.x call must mean the same here (deterministic once sat where window_size is).
    import inspect

    expected = ["dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
                "return_attn_probs"]
    fixed = list(inspect.signature(flash_attn_func).parameters)
    varlen = list(inspect.signature(flash_attn_varlen_func).parameters)
    assert fixed[:3] == ["q", "k", "v"] and fixed[3:11] == expected
    assert varlen[:7] == ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"]
    assert varlen[7:15] == expected
    assert inspect.signature(flash_attn_func).parameters["return_lse"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("kwargs,message", [
    ({"window_size": (-2, 0)}, r"window_size=\(-2, 0\) is not valid; each side is a number of keys >= 0, or -1"),
    ({"window_size": 5}, r"window_size must be a pair \(left, right\) of ints, got 5"),
    ({"softcap": -1.0}, r"softcap=-1.0 is not valid; use a finite number >= 0"),
    ({"alibi_slopes": torch.ones(2, dtype=torch.float16)}, r"alibi_slopes must be a float32 tensor \[heads\] or"),
    ({"return_attn_probs": True}, r"return_attn_probs=True is not supported .* return_lse=True"),
])
def test_unsupported_or_invalid_options_are_one_clear_error(kwargs, message):
    # The options are checked before the tensors, so this answers on a machine without a GPU too.
    q = torch.randn(1, 8, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="flash_attn_func: " + message):
        flash_attn_func(q, q, q, **kwargs)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="flash_attn_varlen_func: " + message):
        flash_attn_varlen_func(q[0], q[0], q[0], cu, cu, 8, 8, **kwargs)


def test_window_reaches_the_custom_op_and_its_fake():
    # The window travels as two ints through the custom op (schema with defaults) and its fake, so
    # torch.compile traces windowed calls; the fake's shapes do not depend on it.
    from bridge.kernels.interface import _flash_bwd_fake, _flash_fwd_fake

    q = torch.empty(2, 5, 4, 64, dtype=torch.bfloat16, device="meta")
    out, lse = _flash_fwd_fake(q, q, q, None, None, 5, 5, 0.125, False, False, 3, 0)
    assert out.shape == q.shape and lse.shape == (2, 4, 5)
    assert all(t.shape == q.shape for t in _flash_bwd_fake(q, q, q, q, q, lse, None, None, 5, 5, 0.125, True, False,
                                                            3, 0))
    schema = str(interface._flash_fwd._opoverload._schema)
    assert "window_left=-1" in schema and "window_right=-1" in schema

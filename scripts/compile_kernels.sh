#!/usr/bin/env bash
# CI compile check for the flash kernel: compiles every torch-free kernel translation unit
# (bridge/kernels/csrc/instantiations/*.cu) with the local nvcc and the builder's flags, two at a time.
# Needs nvcc only (no GPU, no CUDA build of torch). Exits non-zero if any unit fails to compile.
#
#   scripts/compile_kernels.sh            # all units
#   JOBS=4 scripts/compile_kernels.sh     # more parallel compiles
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
csrc="$repo_root/bridge/kernels/csrc"
nvcc_bin="${NVCC:-nvcc}"
jobs="${JOBS:-2}"

if ! command -v "$nvcc_bin" >/dev/null 2>&1; then
    echo "compile_kernels.sh: nvcc not found (set NVCC or put CUDA's bin on PATH)" >&2
    exit 2
fi
shopt -s nullglob
units=("$csrc"/instantiations/*.cu)
if [ "${#units[@]}" -eq 0 ]; then
    echo "compile_kernels.sh: no kernel translation units under $csrc/instantiations" >&2
    exit 2
fi

# The flags come from bridge/kernels/build.py, the one place that defines them.
nvcc_flags="$(cd "$repo_root" && PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -W ignore::RuntimeWarning -m bridge.kernels.build --nvcc-flags)"
out_dir="$(mktemp -d)"
trap 'rm -rf "$out_dir"' EXIT
export csrc out_dir nvcc_bin nvcc_flags

compile_one() {
    local unit="$1" name log
    name="$(basename "$unit" .cu)"
    log="$out_dir/$name.log"
    # shellcheck disable=SC2086  # the flags are a word list
    if "$nvcc_bin" $nvcc_flags -Xptxas=-v -I"$csrc" -c "$unit" -o "$out_dir/$name.o" >"$log" 2>&1; then
        # ptxas reports spills per kernel; surface them without failing the check.
        spills="$(grep -E '[1-9][0-9]* bytes spill stores' "$log" | head -n 1 || true)"
        echo "ok    $name${spills:+   (ptxas: ${spills## })}"
    else
        echo "FAIL  $name"
        sed 's/^/      /' "$log"
        return 1
    fi
}
export -f compile_one

status=0
printf '%s\n' "${units[@]}" | xargs -P "$jobs" -I{} bash -c 'compile_one "$@"' _ {} || status=1
if [ "$status" -eq 0 ]; then
    echo "compiled ${#units[@]} kernel units for sm_90a"
else
    echo "compile_kernels.sh: some kernel units failed to compile for sm_90a" >&2
fi
exit $status

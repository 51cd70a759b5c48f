#!/usr/bin/env bash
# The parallel-layout check of benchmarks/results/parallel_gpu.json: the tiny GPT recipe for 40 steps as
#   single  1 GPU            dp2  data parallel 2     tp2  tensor parallel 2
#   pp2     pipeline 2 (checkpoints at steps 20 and 40)
#   pp2_resume  pipeline 2 resumed from pp2's step-20 checkpoint to step 40 (losses should match pp2's)
# each under `timeout 100`, logs in $OUT/<name>.log. Usage (repo root, 2 GPUs):
#   OUT=/tmp/out bash tests/training/parallel_gpu_runs.sh
# CPU dry run of the same command shape (pipeline/tensor sizes forced to 1, data parallel on gloo):
#   OUT=/tmp/out DRY_RUN_CPU=1 bash tests/training/parallel_gpu_runs.sh
# Then: python tests/training/summarize_parallel_logs.py $OUT > benchmarks/results/parallel_gpu.json
set -u
OUT=${OUT:?set OUT to the folder for the logs}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
COMMON=(--config-name gpt_pretrain train.train_steps=40 scheduler.warmup_steps=5 train.micro_batch_size=8
        train.global_batch_size=16 logging.progress_bar=false logging.tensorboard_dir=null)
BACKEND=model.attention_backend=fused  # cuDNN SDPA: auto would compile the flash kernel first
TP=model.tensor_model_parallel_size=2
PP=model.pipeline_model_parallel_size=2
if [ "${DRY_RUN_CPU:-0}" = 1 ]; then
  COMMON+=(train.device=cpu train.generate_sample=false)
  BACKEND=model.attention_backend=local
  TP=model.tensor_model_parallel_size=1
  PP=model.pipeline_model_parallel_size=1
fi

run() {  # name nproc overrides...
  local name=$1 nproc=$2; shift 2
  echo "=== $name (nproc $nproc): $*" | tee "$OUT/$name.log"
  timeout 100 python3 -m torch.distributed.run --standalone --nproc-per-node="$nproc" scripts/train.py \
    "${COMMON[@]}" "$BACKEND" "$@" >>"$OUT/$name.log" 2>&1
  echo "exit $?" >>"$OUT/$name.log"
  tail -n 8 "$OUT/$name.log"
}

rm -rf /tmp/ck_single /tmp/ck_dp2 /tmp/ck_tp2 /tmp/ck_pp2 /tmp/ck_pp2_resume
run single 1 checkpoint.dir=/tmp/ck_single
run dp2 2 checkpoint.dir=/tmp/ck_dp2
run tp2 2 "$TP" checkpoint.dir=/tmp/ck_tp2
run pp2 2 "$PP" checkpoint.dir=/tmp/ck_pp2 checkpoint.save_interval=20 checkpoint.keep_last=0
# Resume from the step-20 checkpoint: a copy of it whose `latest` names it (pp2 itself ends at step 40).
mkdir -p /tmp/ck_pp2_resume && cp -r /tmp/ck_pp2/step_0000020 /tmp/ck_pp2_resume/ \
  && echo step_0000020 >/tmp/ck_pp2_resume/latest
run pp2_resume 2 "$PP" checkpoint.dir=/tmp/ck_pp2_resume checkpoint.resume=true checkpoint.save_interval=20

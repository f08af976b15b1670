#!/usr/bin/env bash
# The GPU-node measurements of docs/PERFORMANCE.md (issues 13 and 15) in stages, each <= 9 minutes on one H200 with
# 16 cores, its steps' time limits summing below that so a stage always ends with its logs written:
#
#   bash scripts/node_benchmarks.sh sim      # bench_sim at 16 workers (the protocol's vs collection's episodes), the
#                                            # expert's full protocol
#   bash scripts/node_benchmarks.sh vla      # a small (fast and plain decoding) and the 7B VLA (random) through eval.py
#   bash scripts/node_benchmarks.sh protocol # the shipped small VLA, 100 protocol episodes: compiled decoding, 24 envs
#   bash scripts/node_benchmarks.sh full7b   # issue 13's 7B row alone: the random 7B (bf16, fast + compiled decoding)
#                                            # through eval.py, 2 states a task (the first 16 episodes run together)
#   bash scripts/node_benchmarks.sh wide7b   # the random 7B with 16 vs 32 envs (16 vs 32 episodes of tasks 0-7, all at
#                                            # once): does a bigger batch per call lift the policy-bound rate?
#   bash scripts/node_benchmarks.sh contention # the random bf16 7B's calls beside 16 stepping workers (physics only,
#                                            # EGL rendering; niceness 0 vs 10) against the same calls idle
#   bash scripts/node_benchmarks.sh serve    # the full-size VLA behind serve.py: bench_serve at 1 / 8 / 32 clients
#   bash scripts/node_benchmarks.sh gather   # the 7B through eval.py gathering batches (--gather_s 0.5), vs vla's greedy
#   bash scripts/node_benchmarks.sh perf     # issue 18's table: training cases + decoding at full size, with profiles
#                                            # (needs bitsandbytes: carry its wheel instead of a sim bundle)
#   bash scripts/node_benchmarks.sh int8     # 8-bit decoding: the int8 matmul paths' crossings, fused 8-bit projections
#                                            # (needs bitsandbytes, as perf)
#   bash scripts/node_benchmarks.sh nf4      # 4-bit decoding at batch 1 with its profile tables: where issue 18's 4-bit
#                                            # row's time goes before any nf4 kernel is written (bitsandbytes)
#   bash scripts/node_benchmarks.sh seed     # issue 18's seed-recipe row: LLM.int8 at 1 x 4 against the same 4 samples as
#                                            # one micro-batch (4 x 1: the same step, tests/test_training.py), bitsandbytes
#   bash scripts/node_benchmarks.sh gputests # every `pytest -m gpu` test of the suite, one log (issue 18's equivalence
#                                            # tests in one place; needs bitsandbytes, as perf, and the sim bundle,
#                                            # whose expert episodes give the trained-checkpoint guard its frames)
#   bash scripts/node_benchmarks.sh fp8      # quantization fp8 against bf16: single matmuls, the GPU equivalence test,
#                                            # decoding (batch 1 / 8 / 16, token agreement), LoRA training; full size
#   bash scripts/node_benchmarks.sh compile  # speed.compile_llm_layers: LoRA training with each Llama layer compiled, bf16
#                                            # and fp8, against the same case uncompiled
#   bash scripts/node_benchmarks.sh fast24   # issue 18's >= 40 samples/s at <= 24 GiB: compiled fp8 / bf16 with fewer
#                                            # layers recomputed (checkpoint_llm_layers < 32), spending the memory fp8 frees
#   bash scripts/node_benchmarks.sh small    # the learning proof's step: `small` from scratch, batch 128, synthetic
#                                            # frames, eager vs speed.compile_vision vs both compile switches
#   bash scripts/node_benchmarks.sh precision  # float32 masters vs bfloat16 weights, `small` from random weights, the
#                                            # same batches (VIDEO_FRAMES=<a video export>, as learning_proof.sh)
#
# On an offline node first `source <bundle>/activate.sh` (scripts/pack_sim.py; docs/OFFLINE.md); serve needs
# fastapi, uvicorn and json_numpy (carry their wheels). Settings: OUT_ROOT (default outputs/node), TOKENIZER (a
# directory with Llama-2's tokenizer.model), PYTHON. Random-weight checkpoints are written once to /tmp (63-73 s for
# the 7B) and reused by later stages while the machine is kept.
set -uo pipefail  # no -e: a step that hits its limit is recorded and the stage goes on
cd "$(dirname "$0")/.."

OUT_ROOT=${OUT_ROOT:-outputs/node}
TOKENIZER=${TOKENIZER:-../shared/tokenizers/llama2}
PY=${PYTHON:-python}

step() {  # name, limit in s, command...: runs it with a time limit, logs its output and wall time
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  timeout "$limit" "$@" > "$DIR/$name.log" 2>&1
  echo "$name: rc $? in $((SECONDS - started)) s" | tee -a "$DIR/times.txt"
}

checkpoint() {  # preset, dir, limit: a random-weight official-format checkpoint, once
  [ -f "$2/config.json" ] || step "make_$1" "$3" $PY scripts/make_checkpoint.py --preset "$1" --tokenizer "$TOKENIZER" \
    --out "$2" --device cuda
}

sim() {
  step bench_sim 200 $PY scripts/bench_sim.py --workers 16 --cameras agentview,none --jobs protocol,random --seconds 10
  step expert 300 $PY scripts/eval.py --task_suite libero_spatial --policy expert --num_trials_per_task 50 --num_envs 16 \
    --out_dir "$DIR/expert"
}

vla() {  # random weights never succeed: every episode runs its 220 steps (the protocol's worst case)
  checkpoint small /tmp/vla_small 60
  step small 120 $PY scripts/eval.py --checkpoint /tmp/vla_small --num_trials_per_task 2 --num_envs 16 --out_dir "$DIR/small"
  step small_plain 60 $PY scripts/eval.py --checkpoint /tmp/vla_small --num_trials_per_task 1 --num_envs 16 \
    --fast_decoding false --out_dir "$DIR/small_plain"
  checkpoint full /tmp/vla_full 100
  step full 200 $PY scripts/eval.py --checkpoint /tmp/vla_full --num_trials_per_task 1 --num_envs 16 --out_dir "$DIR/full"
}

protocol() {  # issue 13's full protocol <= 6 min for the small VLA, where the policy's ~9 ms a call (mean batch ~3) is
  # ~73 % of the time (twenty-second session): the shipped model on tasks 4 and 3 (100 episodes, the twenty-second
  # session's 85 s at 16 envs), decoding eager vs compiled, 16 vs 24 envs on the 16 cores (envs waiting for the policy
  # leave their core idle)
  local compile envs
  for compile in false true; do
    for envs in 16 24; do
      step "protocol_compile_${compile}_envs_$envs" 135 $PY scripts/eval.py --checkpoint checkpoints/small-libero-spatial \
        --tasks "[4,3]" --num_trials_per_task 50 --num_envs "$envs" --center_crop true --compile_decoding "$compile" \
        --out_dir "$DIR/compile_${compile}_envs_$envs"
    done
  done
}

full7b() {  # random weights never succeed: 20 episodes x 220 steps, 16 at once; the timing line gives the rate
  checkpoint full /tmp/vla_full 100
  step full7b 300 $PY scripts/eval.py --checkpoint /tmp/vla_full --num_trials_per_task 2 --num_envs 16 \
    --out_dir "$DIR/full7b"
}

wide7b() {  # the 7B's protocol is policy-bound (twenty-fourth session: 96 ms a call at a mean batch 6-7, 62.5 steps/s);
  # a decode step reads the weights once whatever the batch, so more envs per call should raise steps/s (twenty-eighth
  # session: 54.0 vs 55.3 steps/s, the prefill is compute-bound). Random weights never succeed, so 2 (4) episodes of
  # each of 8 tasks keep all 16 (32) envs busy to the end: no tail
  local envs
  checkpoint full /tmp/vla_full 100
  for envs in 16 32; do
    step "wide7b_envs_$envs" 200 $PY scripts/eval.py --checkpoint /tmp/vla_full --tasks "[0,1,2,3,4,5,6,7]" \
      --num_trials_per_task $((envs / 8)) --num_envs "$envs" --out_dir "$DIR/envs_$envs"
  done
}

contention() {  # the twenty-eighth session's harness calls ran 19 % above the bench's at the same batch: the CPU
  # (16 simulators on 16 cores) or the GPU (their EGL rendering)? scripts/bench_contention.py builds its own weights
  step contention 420 $PY scripts/bench_contention.py --tokenizer "$TOKENIZER" --batch 8,16 --loads idle,none,agentview \
    --nice 0,10 --workers 16 --seconds 12
  grep -E "^ *(load|idle|none|agentview) " "$DIR/contention.log"
}

gather() {  # scripts/bench_scheduler.py predicts greedy (the vla stage) beats gathering by ~9 % for the 7B
  checkpoint full /tmp/vla_full 100
  step full_gather 200 $PY scripts/eval.py --checkpoint /tmp/vla_full --num_trials_per_task 1 --num_envs 16 \
    --gather_s 0.5 --out_dir "$DIR/full_gather"
}

perf() {  # random 7.5B weights built inside each bench; the profile tables land in the logs
  step finetune 330 $PY scripts/bench_finetune.py --tokenizer "$TOKENIZER" --warmup 1 --steps 3 --profile 3 \
    --case bf16,1,4 --case 8bit,1,4 --case 8bit,1,4,w8,fuse,exp --case bf16,24,1,fast --case bf16,32,1,fast,fuse
  step inference 200 $PY scripts/bench_inference.py --tokenizer "$TOKENIZER" --quantization bf16 --quantization 8bit \
    --quantization 4bit --batch 1 --batch 8 --batch 16 --iters 10 --plain-iters 4 --warmup 2 --agree 16 --fused --compile
}

int8() {  # issue 18's 8-bit decoding levers (needs bitsandbytes, e.g. PYTHONPATH=.gpu/bnb:$PWD): the three int8
  # matmul paths at decode, batched-decode and prefill rows, then whole actions with fused 8-bit q/k/v and gate/up and
  # compiled elementwise ops (docs/PERFORMANCE.md, twenty-seventh session)
  step int8_matmuls 150 $PY scripts/bench_int8_gemv.py --graph --rows 1 16 64 96 128 192 296 --iters 15
  step inference_8bit 330 $PY scripts/bench_inference.py --tokenizer "$TOKENIZER" --quantization 8bit --batch 1 \
    --batch 8 --iters 10 --plain-iters 2 --warmup 2 --agree 8 --fused --compile
}

nf4() {  # issue 18's 4-bit row (15.7 Hz, goal 30) was never profiled: bitsandbytes' nf4 layers run as they are in
  # the fast decoder (its own fused GEMV for single rows, dequantize + matmul for the prefill); the stage breakdown and
  # the profiler tables of one plain and one fast batch-1 call say which of them the 64 ms are
  step inference_nf4 300 $PY scripts/bench_inference.py --tokenizer "$TOKENIZER" --quantization 4bit --batch 1 \
    --batch 8 --iters 10 --plain-iters 2 --warmup 2 --agree 8 --compile --profile
}

seed() {  # the seed recipe (LLM.int8, micro-batch 1 x accumulation 4) is host-bound: ~20 k ATen ops and LLM.int8's
  # host syncs per micro-batch (issue 8's profile). The same 4 samples as one micro-batch make the same optimizer step
  # (every sample has 8 labelled tokens; tests/test_training.py::test_accumulation_equals_one_large_batch) in a quarter
  # of the launches, still in LLM.int8 (whose outlier columns are then chosen over four samples' rows, not one's).
  # The first case is the baseline the ratios are taken against. Thirtieth session (H100): 4 x 1 with the Llama layers
  # recomputed 3.7-5.9 samples/s at 14.0 GiB (the host's speed varies); the towers recomputed too 12.0 GiB at 3.0-3.3,
  # their recompute +0.65 s of host time a step for +17 ms of GPU time (profile). cvis compiles the tower blocks, so
  # that the recompute replays fused kernels instead of ~1,000 small ops dispatched one by one
  step finetune_seed 420 $PY scripts/bench_finetune.py --tokenizer "$TOKENIZER" --warmup 2 --steps 6 \
    --case 8bit,1,4 --case 8bit,4,1,ckpt,exp --case 8bit,4,1,ckpt,vis,exp --case 8bit,4,1,ckpt,vis,cvis,exp
  tail -n 8 "$DIR/finetune_seed.log"
}

gputests() {  # the GPU half of the test suite: the files that hold `gpu` tests, named so that no other file's
  # imports (simulator, TensorFlow) need to resolve on the node; the summary line and any traceback land in the log.
  # The decoding guard on a trained model runs the shipped checkpoint on frames of the expert's episodes
  step guard_frames 90 $PY scripts/guard_frames.py --out "$DIR/guard_frames.npz" --frames 64 --workers 8
  VLA_TRAINED_CHECKPOINT=checkpoints/small-libero-spatial VLA_GUARD_FRAMES="$DIR/guard_frames.npz" \
  VLA_LLAMA2_DIR="$TOKENIZER" step gpu_tests 420 $PY -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_fast_paths.py \
    tests/test_model.py tests/test_processor.py tests/test_augment_torch.py tests/test_video_frames.py \
    tests/test_lora.py tests/test_policies.py
  tail -n 3 "$DIR/gpu_tests.log"
}

fp8() {  # FP8 tensor cores for the frozen Llama (vla.fp8_linear); no bitsandbytes needed
  step matmul_fp8 40 $PY scripts/bench_fp8_matmul.py --iters 30
  VLA_LLAMA2_DIR="$TOKENIZER" step fp8_gpu_test 150 $PY -m pytest -q -s -m gpu tests/test_fast_paths.py \
    -k "(agrees_with_plain_at_full_size and fp8) or fp8_fused_quantization"
  step inference_fp8 200 $PY scripts/bench_inference.py --tokenizer "$TOKENIZER" --quantization bf16 \
    --quantization fp8 --batch 1 --batch 8 --batch 16 --iters 10 --plain-iters 4 --warmup 2 --agree 16 --fused --compile
  step finetune_fp8 150 $PY scripts/bench_finetune.py --tokenizer "$TOKENIZER" --warmup 1 --steps 3 \
    --case bf16,32,1,fast,fuse --case fp8,32,1,fast,fuse --case fp8,1,4
}

compile() {  # the profile's lever for >= 40 samples/s: the elementwise chain of each layer fused by torch.compile
  step finetune_compile 420 $PY scripts/bench_finetune.py --tokenizer "$TOKENIZER" --warmup 2 --steps 3 \
    --case bf16,32,1,fast,fuse --case bf16,32,1,fast,fuse,compile --case fp8,32,1,fast,fuse,compile
}

fast24() {  # compiled fp8 at 32 x 1 reserves 15.7 GiB (twenty-first session); a layer kept, not recomputed, costs
  # ~42 MB a sample (tenth session): ~6 layers at batch 32 fit under 24 GiB
  # The first case is the eager bf16 baseline the ratios are taken against (the card may differ from the last lease's)
  step finetune_fast24 480 $PY scripts/bench_finetune.py --tokenizer "$TOKENIZER" --warmup 2 --steps 3 \
    --case bf16,32,1,fast,fuse --case fp8,32,1,fast,fuse,compile --case fp8,32,1,fast,ckpt=26,fuse,compile \
    --case fp8,40,1,fast,ckpt=28,fuse,compile --case bf16,32,1,fast,ckpt=31,fuse,compile
}

small() {  # kernel launches bound this step (docs/PERFORMANCE.md, tenth session): what regional compilation buys it.
  # Median samples/s over the logs after step 200 (compilation happens in the first steps)
  local name flags
  for name in eager vision both; do
    case $name in eager) flags=() ;; vision) flags=(--speed.compile_vision true) ;;
      both) flags=(--speed.compile_vision true --speed.compile_llm_layers true) ;; esac
    step "small_$name" 150 $PY scripts/finetune.py --config configs/small_libero_spatial.yaml --model.preset small \
      --model.tokenizer_path "$TOKENIZER" --data.source synthetic --optim.batch_size 128 --optim.max_steps 1000 \
      --optim.save_steps 100000 --optim.warmup_steps 10 --logging.log_steps 50 --logging.val_batches 0 \
      --speed.fused_optimizer true "${flags[@]}" --run.root_dir "$DIR/runs" --run.id "$name" --run.save_merged false
    $PY - "$DIR/runs/$name/metrics.jsonl" "$name" <<'PY' | tee -a "$DIR/times.txt"
import json, statistics, sys
rates = [r["samples_per_s"] for r in map(json.loads, open(sys.argv[1])) if r["step"] > 200 and "samples_per_s" in r]
print(f"{sys.argv[2]}: median {statistics.median(rates):.0f} samples/s over {len(rates)} logs" if rates else "no rates")
PY
  done
}

precision() {  # the A/B behind model.weights_dtype: the same recipe as the learning proof, only the weights' precision
  step master_weights 500 $PY scripts/bench_master_weights.py --frames_dir "${VIDEO_FRAMES:?set VIDEO_FRAMES}" \
    --tokenizer "$TOKENIZER" --preset small --steps 2500 --batch_size 128 --log_steps 250
  tail -n 12 "$DIR/master_weights.log"
}

serve() {
  checkpoint full /tmp/vla_full 100
  step serve 300 $PY scripts/bench_serve.py --checkpoint /tmp/vla_full --clients 1 8 32 --seconds 20 \
    --unnorm_key libero_spatial --device cuda --dtype bfloat16 --max_batch 32
}

for stage in "$@"; do
  DIR="$OUT_ROOT/$stage"
  mkdir -p "$DIR"
  case "$stage" in
    sim) sim ;;
    vla) vla ;;
    protocol) protocol ;;
    full7b) full7b ;;
    wide7b) wide7b ;;
    contention) contention ;;
    serve) serve ;;
    gather) gather ;;
    perf) perf ;;
    int8) int8 ;;
    nf4) nf4 ;;
    gputests) gputests ;;
    seed) seed ;;
    precision) precision ;;
    small) small ;;
    fp8) fp8 ;;
    compile) compile ;;
    fast24) fast24 ;;
    *) echo "unknown stage $stage: sim | vla | protocol | full7b | wide7b | serve | gather | perf | int8 | seed | gputests | precision | fp8 | compile | fast24 | small" >&2
      exit 2 ;;
  esac
  grep -h "timing:" "$DIR"/*.log 2>/dev/null | tail -n 4
done

#!/usr/bin/env bash
# The learning proof in stages, each a command of <= 10 minutes on one GPU node (16 cores) that resumes from its own
# files: demonstrations -> from-scratch training -> LIBERO evaluation. docs/RESULTS.md gives the measured wall times.
#
#   bash scripts/learning_proof.sh collect      # noisy scripted demos of a suite as a TF-free frame store
#   bash scripts/learning_proof.sh train        # small VLAs from random weights (64 and 256 image tokens)
#   bash scripts/learning_proof.sh eval         # every saved checkpoint on a sample of the fixed states, the best on all
#                                               # (FULL_ON), and its held-out metrics with swapped instructions
#   bash scripts/learning_proof.sh expert       # the scripted expert on the full protocol (the data's ceiling)
#   bash scripts/learning_proof.sh ship         # the full protocol's checkpoint as int8 (~20 MB, git-sized)
#   bash scripts/learning_proof.sh train ship eval   # in a lease: the int8 copy exists before the full protocol runs
#
# On an offline GPU node first `source <bundle>/activate.sh` (scripts/pack_sim.py; docs/OFFLINE.md). Settings come
# from the environment: SUITE, PROOF (default outputs/proof), EPISODES (per task), NOISE, SEED, STEPS, BATCH, LR,
# VAL_BATCHES, MAX_HOLD, PREFETCH, FUSED_OPTIMIZER, TRAIN_FLAGS (more finetune.py flags, e.g. "--speed.compile_vision
# true"), COLLECT_FLAGS (more collect_demos.py flags, e.g. "--miss_height 0.12 --max_steps 320": rehearsed misses;
# "--learner_checkpoint checkpoints/small-libero-spatial --max_steps 340": recoveries from a learner's states),
# EVAL_FLAGS (more eval.py flags), FIRST_TASKS (e.g. "4,3": these tasks' full protocol first, the rest after, one
# merged table), WORKERS, EVAL_ENVS, TOKENIZER, SAMPLE_TRIALS, FULL_TRIALS and FULL_ON, the
# checkpoint that gets the full protocol and is shipped: last (default: the end of the annealed schedule, as OpenVLA
# evaluates), best_sample (the highest success rate on the sample states: in docs/RESULTS.md's fifteenth session a
# 50-episode sample of 30 % became 17.2 % on the full protocol, luck selected) or best_val (the lowest held-out loss:
# picked too early in the thirteenth session). VIDEO_FRAMES=<dir> trains from demonstrations collected elsewhere
# instead (an export of scripts/export_video_frames.py, ~0.5 KB a frame: small enough to carry to a node); collect
# then does nothing. ADD_FRAMES="<export> ..." trains on both: this node's
# collection (exported to H.264 after collect) joined with the exports collected elsewhere, in $PROOF/video.
# INIT=<checkpoint> continues from trained weights instead of random ones (and keeps their action statistics, so
# the 256 bins mean what they meant): the bf16 copy `ship` writes beside the int8 one ($PROOF/ship/<preset>-bf16, ~55 MB),
# brought home from an earlier lease, so that training spans leases (each lease's schedule warms up and anneals again).
# An int8 copy (the shipped checkpoints/small-libero-spatial) is converted to bf16 first ($PROOF/init-bf16): its
# weights rounded (<= 1/254 of a row's largest), lm_head's rows outside the action ids zeros, relearnt as training starts.
# GROW="--add_llm_layers N [--add_tower_blocks M]" continues from a deeper copy of INIT that predicts the same actions
# (scripts/grow_checkpoint.py: the added layers start as the identity) — more capacity without random weights.
# In a lease of short calls, run it through scripts/node_job.sh (docs/OFFLINE.md §5).
# A CPU rehearsal of every stage in ~5 min: PROOF=/tmp/rehearse EPISODES=1 TASKS="[0]"
# WORKERS=1 STEPS=4 SAVES=2 BATCH=4 PRESETS="micro tiny" SAMPLE_TRIALS=1 FULL_TRIALS=1 EVAL_WHILE_TRAINING=1
# VAL_BATCHES=0 (one episode per task leaves no val split).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # also when sourced (its functions, one at a time)

SUITE=${SUITE:-libero_spatial}
PROOF=${PROOF:-outputs/proof}
EPISODES=${EPISODES:-60}         # expert attempts per task; failures are dropped
NOISE=${NOISE:-0.15}             # std of the DART-style noise on the executed deltas
SEED=${SEED:-1}                  # the collection's random placements (never the fixed states): another seed, other
                                 # demonstrations
NOISE_DIMS=${NOISE_DIMS:-xyz}    # xyz | xyzrpy (rotation noise makes the clean rpy labels unlearnable: docs/RESULTS.md)
STEPS=${STEPS:-8000}             # optimizer steps of batch 128 per model (8,000 ≈ 14 epochs of 600 episodes; the
                                 # issue-7 model reached token accuracy 0.86 after 28 epochs, the 7-epoch runs 0.5)
SAVES=${SAVES:-5}                # checkpoints per run (evaluated one by one: the learning curve)
WORKERS=${WORKERS:-16}           # simulator processes, one a core: collection, the expert, the sample evaluations
EVAL_ENVS=${EVAL_ENVS:-$((WORKERS * 3 / 2))}  # envs of the full protocol: half again as many as cores, since an env
                                 # waiting for the policy leaves its core idle (28th session, H100: 231 steps/s
                                 # with 24 envs, 212 with 16; docs/PERFORMANCE.md)
TOKENIZER=${TOKENIZER:-../shared/tokenizers/llama2}
SAMPLE_TRIALS=${SAMPLE_TRIALS:-5}   # fixed initial states per task for the intermediate checkpoints
FULL_TRIALS=${FULL_TRIALS:-50}      # fixed initial states per task for the last checkpoint (50 = OpenVLA's protocol)
PRESETS=${PRESETS:-"small256 small"}
BATCH=${BATCH:-128}
LR=${LR:-}                        # peak learning rate; empty = the config's (5e-4, tuned for batch 128)
VAL_BATCHES=${VAL_BATCHES:-100}   # held-out loss / accuracy / L1 at each save over up to this many batches of the val
                                  # split (100 x 128 frames: all of it for these suites); 0 = off
FULL_ON=${FULL_ON:-last}         # last | best_sample | best_val (see above)
MAX_HOLD=${MAX_HOLD:-12}          # frames trained on of each still hold of the expert (its close: 12 at most since the
                                  # sixteenth session; older data held 15, frames alike labelled "stay"); empty = all
PREFETCH=${PREFETCH:-0}           # batches made ahead by a thread while the model steps (speed.prefetch_batches)
FUSED_OPTIMIZER=${FUSED_OPTIMIZER:-true}   # AdamW's fused implementation (speed.fused_optimizer; +8-14 % a step, H100)
case "$FULL_ON" in best_sample|best_val|last) ;; *) echo "FULL_ON=$FULL_ON: choose best_sample, best_val or last" >&2; exit 2 ;; esac
TASKS=${TASKS:-}                  # e.g. "[0,1]" for a smoke run; empty = every task
FIRST_TASKS=${FIRST_TASKS:-}      # e.g. "4,3": the full protocol runs these tasks first (see full_protocol)
[ -z "$TASKS" ] || [ -z "$FIRST_TASKS" ] || { echo "set TASKS or FIRST_TASKS, not both" >&2; exit 2; }
VIDEO_FRAMES=${VIDEO_FRAMES:-}    # a video export to train from; empty = the frame store that collect writes
ADD_FRAMES=${ADD_FRAMES:-}        # video exports joined with this node's collection (see above)
INIT=${INIT:-}                    # a checkpoint to continue from (see above); empty = random weights
[ -z "$INIT" ] || [ -f "$INIT/config.json" ] || { echo "INIT=$INIT has no config.json: point it at a checkpoint" \
  "that ship writes (\$PROOF/ship/<preset>-bf16 or -int8)" >&2; exit 2; }
GROW=${GROW:-}                    # e.g. "--add_llm_layers 4": INIT grown first (scripts/grow_checkpoint.py, see above)
[ -z "$GROW" ] || [ -n "$INIT" ] || { echo "GROW=\"$GROW\" grows INIT: set INIT to the checkpoint to grow" >&2; exit 2; }
DATA="$PROOF/data/${SUITE}_no_noops"
[ -z "$VIDEO_FRAMES" ] || [ -z "$ADD_FRAMES" ] || { echo "set VIDEO_FRAMES or ADD_FRAMES, not both" >&2; exit 2; }
[ -z "$ADD_FRAMES" ] || VIDEO_FRAMES="$PROOF/video"
if [ -n "$VIDEO_FRAMES" ]; then SOURCE=video_frames FRAMES_DIR=$VIDEO_FRAMES; else SOURCE=frames FRAMES_DIR=$DATA; fi
PY=${PYTHON:-python}

collect() {
  if [ -n "$VIDEO_FRAMES" ] && [ -z "$ADD_FRAMES" ]; then echo "demos: training from the video export $VIDEO_FRAMES"; return; fi
  if [ -f "$DATA/index.json" ]; then echo "demos: $DATA is complete"
  else
    rm -rf "$PROOF/data"  # an unfinished store (no index.json) is started again
    $PY scripts/collect_demos.py --task_suite "$SUITE" --episodes_per_task "$EPISODES" --action_noise "$NOISE" \
      --noise_dims "$NOISE_DIMS" --format frames --num_workers "$WORKERS" --seed "$SEED" --out "$PROOF/data" ${TASKS:+--tasks "${TASKS//[\[\]]/}"} \
      ${COLLECT_FLAGS:-}
  fi
  [ -z "$ADD_FRAMES" ] || join_frames
}

join_frames() {  # this node's collection as H.264, joined with ADD_FRAMES (each step skipped once its export exists;
  # an interrupted one leaves only <out>.tmp, which the next run replaces)
  [ -f "$PROOF/video_node/index.npz" ] \
    || $PY scripts/export_video_frames.py --frames_dir "$DATA" --out "$PROOF/video_node"
  # shellcheck disable=SC2086  # ADD_FRAMES is a list of folders
  [ -f "$VIDEO_FRAMES/index.npz" ] || $PY scripts/export_video_frames.py --merge "$PROOF/video_node" $ADD_FRAMES --out "$VIDEO_FRAMES"
}

float_init() {  # INIT as finetune.py reads it: an int8 copy converted to bf16 once ($PROOF/init-bf16), then grown once
  # when GROW is set ($PROOF/init-grown)
  local init=$INIT
  if [ -n "$INIT" ] && grep -q '"vla_int8"' "$INIT/config.json"; then
    [ -f "$PROOF/init-bf16/config.json" ] || $PY scripts/convert_checkpoint.py --checkpoint "$INIT" \
      --out "$PROOF/init-bf16" --overwrite --dtype bfloat16 >&2
    init="$PROOF/init-bf16"
  fi
  if [ -n "$GROW" ]; then
    # shellcheck disable=SC2086  # GROW is a list of flags
    [ -f "$PROOF/init-grown/config.json" ] || $PY scripts/grow_checkpoint.py --checkpoint "$init" \
      --out "$PROOF/init-grown" --overwrite --dtype bfloat16 $GROW >&2
    init="$PROOF/init-grown"
  fi
  echo "$init"
}

train_one() {  # $1 = preset, $2 = the checkpoint to continue from (float_init; empty = random weights)
  local run="$PROOF/runs/$1" init=${2:-} resume=()
  [ -f "$run/trainer_state.safetensors" ] || [ -f "$run/trainer_state.pt" ] && resume=(--resume)
  $PY scripts/finetune.py --config configs/small_libero_spatial.yaml --model.preset "$1" \
    --model.tokenizer_path "$TOKENIZER" ${init:+--model.vla_path "$init" --model.unnorm_key "${SUITE}_no_noops"} \
    --data.source "$SOURCE" --data.frames_dir "$FRAMES_DIR" \
    --optim.batch_size "$BATCH" ${LR:+--optim.learning_rate "$LR"} --logging.val_batches "$VAL_BATCHES" \
    ${MAX_HOLD:+--data.max_hold "$MAX_HOLD"} --speed.prefetch_batches "$PREFETCH" \
    --speed.fused_optimizer "$FUSED_OPTIMIZER" ${TRAIN_FLAGS:-} \
    --optim.max_steps "$STEPS" --optim.save_steps $((STEPS / SAVES)) --optim.warmup_steps $((STEPS / 10)) \
    --run.root_dir "$PROOF/runs" --run.id "$1" --run.save_latest_only false "${resume[@]}" > "$PROOF/train_$1.log" 2>&1
}

any_alive() {  # true while one of the given processes still runs
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}

train() {  # the runs share the GPU; with EVAL_WHILE_TRAINING=1 finished checkpoints are evaluated meanwhile
  mkdir -p "$PROOF"
  local pids=() init
  init=$(float_init)
  for preset in $PRESETS; do train_one "$preset" "$init" & pids+=($!); done
  if [ "${EVAL_WHILE_TRAINING:-0}" = 1 ]; then
    while any_alive "${pids[@]}"; do evaluate_samples || true; sleep 5; done
  fi
  for pid in "${pids[@]}"; do wait "$pid" || { tail -n 20 "$PROOF"/train_*.log; return 1; }; done
  tail -n 2 "$PROOF"/train_*.log
}

eval_checkpoint() {  # $1 = merged checkpoint dir, $2 = trials per task, $3 = out dir, then extra eval.py flags
  local ckpt=$1 trials=$2 out=$3 resume=false
  shift 3
  [ -f "$out/episodes.jsonl" ] && resume=true
  $PY scripts/eval.py --task_suite "$SUITE" --checkpoint "$ckpt" --num_trials_per_task "$trials" \
    --num_envs "${ENVS:-$WORKERS}" --center_crop true --out_dir "$out" --resume "$resume" ${TASKS:+--tasks "$TASKS"} \
    ${EVAL_FLAGS:-} "$@" > "$out.log" 2>&1 || { tail -n 20 "$out.log"; return 1; }
  grep -A 14 "max steps" "$out.log" | tail -n 12
}

checkpoints() {  # $1 = preset: its complete merged checkpoints, oldest first
  { ls -d "$PROOF/runs/$1"/merged--*_chkpt 2>/dev/null || true; } | awk -F'merged--' '{split($2, a, "_"); print a[1], $0}' \
    | sort -n | cut -d' ' -f2-
}

full_checkpoint() {  # $1 = preset: the checkpoint the full protocol and ship take once training has finished
  # (FULL_ON: vla.run_dir.RunDir.best_step); its last where the criterion has no records
  local run="$PROOF/runs/$1" step="" by
  case "$FULL_ON" in best_sample) by=success ;; best_val) by=val_loss ;; *) by="" ;; esac
  if [ -n "$by" ] && [ -f "$run/merged--${STEPS}_chkpt/config.json" ]; then
    step=$($PY -c 'import sys; from vla.run_dir import RunDir
print(RunDir(sys.argv[1]).best_step(sys.argv[2]) or "")' "$run" "$by")
  fi
  if [ -n "$step" ]; then echo "$run/merged--${step}_chkpt"; else checkpoints "$1" | tail -n 1; fi
}

evaluate_samples() {  # on SAMPLE_TRIALS fixed states per task: every checkpoint of the first preset but its last,
  # which `evaluate` runs on FULL_TRIALS (the learning curve), the last one of the others (the ablation); the fast
  # decoder uncompiled (CUDA graphs, no compile time per checkpoint; the plain decoder took 92 % of a sample's wall
  # time on the node, 82 ms a call)
  local first=${PRESETS%% *} ckpts step
  mkdir -p "$PROOF/eval"
  for preset in $PRESETS; do
    ckpts=$(checkpoints "$preset")
    if [ "$preset" = "$first" ] && [ "$FULL_ON" = last ]; then
      ckpts=$(echo "$ckpts" | grep -v "merged--${STEPS}_chkpt\$" || true)
    elif [ "$preset" = "$first" ]; then
      :  # FULL_ON=best_*: every checkpoint gets its sample; the full protocol's is chosen after training
    else
      ckpts=$(echo "$ckpts" | tail -n 1)
    fi
    [ "$preset" = "$first" ] || [ -f "$PROOF/runs/$preset/merged--${STEPS}_chkpt/config.json" ] || continue
    for ckpt in $ckpts; do
      step=${ckpt##*merged--}; step=${step%_chkpt}
      [ -f "$PROOF/eval/$preset-$step/summary.json" ] \
        || eval_checkpoint "$ckpt" "$SAMPLE_TRIALS" "$PROOF/eval/$preset-$step" --compile_decoding false
    done
  done
}

evaluate() {  # the samples, then the first preset's FULL_ON checkpoint on FULL_TRIALS fixed states per task (fast decoding,
  # compiled when FULL_COMPILE=true: the small preset is cheap to decode beside the simulator, so by default no compile)
  evaluate_samples
  local first=${PRESETS%% *} last
  last=$(full_checkpoint "$first")
  [ -z "$last" ] || [ -f "$PROOF/eval/$first-full/summary.json" ] || full_protocol "$last" "$PROOF/eval/$first-full"
  [ -z "$last" ] || [ "$VAL_BATCHES" = 0 ] || language_probe "$last" "$PROOF/eval/$first-language.log"
}

full_protocol() {  # $1 = checkpoint, $2 = out dir: FULL_TRIALS fixed states of every task. With FIRST_TASKS (e.g.
  # "4,3": the tasks a change targets) those tasks run first, in $2-first, then the others in $2-rest, merged into $2
  # (scripts/merge_evals.py): the same episodes, but a lease cut short has the answer that matters most
  local flags=(--compile_decoding "${FULL_COMPILE:-false}") rest ENVS=$EVAL_ENVS  # eval_checkpoint's env count
  if [ -z "${FIRST_TASKS:-}" ]; then eval_checkpoint "$1" "$FULL_TRIALS" "$2" "${flags[@]}"; return; fi
  rest=$($PY -c 'import sys; from vla.libero_env import list_tasks
first = {int(t) for t in sys.argv[2].split(",")}
print(",".join(str(t.task_id) for t in list_tasks(sys.argv[1]) if t.task_id not in first))' "$SUITE" "$FIRST_TASKS" \
    | tail -n 1) || return 1  # the last line: LIBERO prints its task order on import
  TASKS="[$FIRST_TASKS]" eval_checkpoint "$1" "$FULL_TRIALS" "$2-first" "${flags[@]}" || return 1
  [ -z "$rest" ] || TASKS="[$rest]" eval_checkpoint "$1" "$FULL_TRIALS" "$2-rest" "${flags[@]}" || return 1
  if [ -z "$rest" ]; then cp -r "$2-first" "$2"
  else $PY scripts/merge_evals.py --inputs "$2-first" "$2-rest" --out "$2" --overwrite | tail -n 13; fi
}

language_probe() {  # $1 = checkpoint, $2 = log: its held-out metrics with true and with swapped instructions (does
  # the policy read its instruction? scripts/val_metrics.py --swap_instructions; seconds on a GPU)
  [ -f "$2" ] && return
  if $PY scripts/val_metrics.py --checkpoint "$1" --source "$SOURCE" --frames_dir "$FRAMES_DIR" --swap_instructions \
      ${MAX_HOLD:+--max_hold "$MAX_HOLD"} > "$2.tmp" 2>&1; then
    mv "$2.tmp" "$2" && tail -n 4 "$2"
  else
    echo "language probe failed (the evaluation above stands): $2.tmp"; tail -n 5 "$2.tmp"
  fi
}

ship() {  # int8 weights, lm_head's action rows (vla/checkpoint_int8.py): the small preset's 55 MB -> 20 MB; and a
  # bf16 copy (every weight: what INIT continues from in a later lease)
  local first=${PRESETS%% *} last dtype
  last=$(full_checkpoint "$first")
  [ -n "$last" ] || { echo "ship: no checkpoint of $first in $PROOF/runs yet: run the train stage" >&2; return 1; }
  for dtype in int8 bfloat16; do  # folders <preset>-int8 and <preset>-bf16
    [ -f "$PROOF/ship/$first-${dtype/float/f}/config.json" ] || $PY scripts/convert_checkpoint.py --checkpoint "$last" \
      --out "$PROOF/ship/$first-${dtype/float/f}" --overwrite --dtype "$dtype"
  done
}

expert() {
  [ -f "$PROOF/eval/expert/summary.json" ] && return
  local resume=false
  [ -f "$PROOF/eval/expert/episodes.jsonl" ] && resume=true
  $PY scripts/eval.py --task_suite "$SUITE" --policy expert --num_trials_per_task 50 --num_envs "$WORKERS" \
    --out_dir "$PROOF/eval/expert" --resume "$resume"
}

# ship takes the full protocol's checkpoint. With FULL_ON=last that is known once training ends, so `train ship eval`
# brings the weights home before the full protocol; with best_* the evaluations choose it: refuse ship before them
if [ "$FULL_ON" != last ] && [ ! -f "$PROOF/eval/${PRESETS%% *}-full/summary.json" ]; then
  for stage in "$@"; do
    [ "$stage" = eval ] && break
    [ "$stage" != ship ] || { echo "ship before eval with FULL_ON=$FULL_ON: the evaluations choose that checkpoint;" \
      "run the stages as 'eval ship' (or FULL_ON=last, then 'train ship eval')" >&2; exit 2; }
  done
fi

# training from video exports decodes them with PyAV: a Python without it fails here, before anything starts
# (a sim bundle has no PyAV: docs/OFFLINE.md §5 carries its wheel in a call of its own)
if [ "$SOURCE" = video_frames ] && [[ " $* " =~ \ (collect|train|eval)\  ]] && ! $PY -c "import av" 2>/dev/null; then
  echo "VIDEO_FRAMES=$VIDEO_FRAMES: the video exports need PyAV and $PY cannot import av. Unzip its wheel" \
    "(av-*-cp311-abi3-manylinux_2_28_x86_64.whl) into /tmp/avsite and export PYTHONPATH=/tmp/avsite:\$PYTHONPATH" \
    "(docs/OFFLINE.md §5), or pip install av" >&2
  exit 2
fi

for stage in "$@"; do
  case "$stage" in
    collect) collect ;;
    train) train ;;
    eval) evaluate ;;
    expert) expert ;;
    ship) ship ;;
    *) echo "unknown stage $stage: collect | train | eval | expert | ship" >&2; exit 2 ;;
  esac
done

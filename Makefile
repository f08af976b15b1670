# The workflow: `make demo` runs the main job on the embedded tiny default, `make test` runs the tests.
# Both set up everything they need (venv, Python packages, Debian GL libraries for headless MuJoCo) and are idempotent.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | md5sum | cut -c1-12)
GL_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libopengl0 libosmesa6
export OMP_NUM_THREADS ?= 1
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TF_CPP_MIN_LOG_LEVEL ?= 2
# The PyPI libero package ships no assets: use the project machines' copy when it sits beside the checkout.
ifneq ($(wildcard ../shared/libero_assets/scenes),)
export VLA_LIBERO_ASSETS ?= $(abspath ../shared/libero_assets)
endif

.PHONY: setup test test-all demo lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s $(GL_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(GL_PACKAGES) >/dev/null; fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[data,libero,dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import vla, torch, timm, transformers, peft, tensorflow_datasets, libero, robosuite"
	rm -f $(VENV)/.stamp-* && touch $@

test: setup
	$(BIN)/python -m pytest -m "not gpu" -q --durations=15  # the slowest tests, to keep CI under 20 min

lint: setup
	$(BIN)/ruff check vla scripts tests
	$(BIN)/ruff format --check vla scripts tests

format: setup
	$(BIN)/ruff format vla scripts tests
	$(BIN)/ruff check --fix vla scripts tests

# The loop in miniature (~7-10 min on 2 CPU cores): scripted-expert LIBERO demos -> RLDS -> a tiny VLA trained from
# random weights -> LIBERO evaluation on the benchmark's fixed initial states; then the checkpoint the repository ships,
# trained the same way for longer, on SHIPPED_TRIALS fixed initial states. Everything lands in outputs/demo/.
DEMO := outputs/demo
SHIPPED_TRIALS ?= 8
demo: setup
	rm -rf $(DEMO)
	$(BIN)/python scripts/collect_demos.py --task_suite libero_spatial --tasks 0 --episodes_per_task 4 \
		--num_workers 2 --out $(DEMO)/data
	$(BIN)/python scripts/finetune.py --config configs/tiny.yaml --data.data_root_dir $(DEMO)/data \
		--run_root_dir $(DEMO)/runs --max_steps 150
	$(BIN)/python scripts/eval.py --task_suite libero_spatial --checkpoint $(DEMO)/runs/tiny/merged --tasks [0] \
		--num_trials_per_task 2 --num_envs 2 --center_crop false --save_videos true --out_dir $(DEMO)/eval
	@echo "== the shipped checkpoint (a small VLA trained from scratch, 56.6 % on libero_spatial: docs/RESULTS.md) on fixed initial states of task 0 =="
	$(BIN)/python scripts/eval.py --task_suite libero_spatial --checkpoint checkpoints/small-libero-spatial --tasks [0] \
		--num_trials_per_task $(SHIPPED_TRIALS) --num_envs 2 --center_crop true --save_videos true --out_dir $(DEMO)/shipped
	@echo "demo outputs: $(DEMO)/data (RLDS demos), $(DEMO)/runs/tiny (metrics.jsonl, learning_curve.png, merged/),"
	@echo "              $(DEMO)/eval (episodes.jsonl, summary.json, videos/), $(DEMO)/shipped (the same for the shipped model)"

bench: setup
	$(BIN)/python scripts/bench_data.py

clean:
	rm -rf $(VENV) runs outputs .pytest_cache .ruff_cache

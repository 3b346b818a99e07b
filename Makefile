# cse_pose: the commands a newcomer runs. `make demo` and `make test` set up .venv themselves.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SETUP_INPUTS := requirements.txt scripts/setup.sh ros2_ws/src/cse_pose/setup.py ros2_ws/src/cse_pose_ros/setup.py \
	training/pyproject.toml tools/pyproject.toml
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test lint demo train eval bench bench-gpu bench-solver train-smoke export clean

$(VENV)/.stamp: $(SETUP_INPUTS)
	bash scripts/setup.sh

setup: $(VENV)/.stamp  ## create .venv with ROS 2 wheels, torch CPU, onnxruntime, open3d (idempotent)

test: $(VENV)/.stamp  ## the whole pytest suite (ROS-free runtime, node over real DDS, training, dev tools)
	$(PY) -m pytest -q ros2_ws/src/cse_pose/test ros2_ws/src/cse_pose_ros/test training/tests tools/tests

lint: $(VENV)/.stamp  ## ruff
	$(VENV)/bin/ruff check .

demo: $(VENV)/.stamp  ## synthetic camera + pose node over DDS; per-frame errors, annotated PNG (DEMO_ARGS=...)
	bash scripts/demo.sh $(DEMO_ARGS)

CATEGORY ?= mug
STEPS ?= 1000
train: $(VENV)/.stamp  ## CATEGORY=<category> [STEPS=1000]: the shipped models' recipe on CPU -> out/<category>/export/<category>.onnx (~11 min)
	bash scripts/train_category.sh $(CATEGORY) $(STEPS)

eval: $(VENV)/.stamp  ## every models/*.onnx on its held-out synthetic test split + baselines (a)(b)(c); tables in out/eval, ~7 min (EVAL_ARGS=...)
	$(PY) -m cse_train eval-models --no-progress $(EVAL_ARGS)

bench: $(VENV)/.stamp  ## per-stage latency: node pipeline (onnxruntime/torch) vs the reference-equivalent peer; memory over 10,000 frames (BENCH_ARGS=...)
	$(PY) -m cse_pose_dev.bench $(BENCH_ARGS)

bench-gpu: $(VENV)/.stamp  ## the same table on an NVIDIA GPU (installs onnxruntime-gpu + TensorRT into .venv if missing)
	bash scripts/bench_gpu.sh $(BENCH_ARGS)

bench-solver: $(VENV)/.stamp  ## our RANSAC-Umeyama vs plain Umeyama vs open3d RANSAC
	$(PY) -m cse_pose_dev.bench_solver

train-smoke: $(VENV)/.stamp  ## tiny synthetic set -> 250 CPU steps (small) -> export -> ONNX check -> eval (~5 min)
	$(PY) -m cse_train smoke --out out/smoke

export: $(VENV)/.stamp  ## CKPT=<checkpoint> -> models/<category>.onnx + .pt
	$(PY) -m cse_train export --checkpoint $(CKPT) --out-dir models

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# cse_pose: the commands a newcomer runs. `make demo` and `make test` set up .venv themselves.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# ROS 2 packages PyPI lacks (launch, launch_ros, ros2 CLI, message_filters, tf2_ros, vision_msgs), as wheels
ROS_WHEELS ?= ../shared/ros-wheels
export ROS_WHEELS
# setup re-runs when any of these changes: the pip inputs, the ROS wheels (folder and files), and the folders whose
# files it links into .venv's ament index (a folder's time changes when a file is added or removed there)
SETUP_INPUTS := requirements.txt scripts/setup.sh ros2_ws/src/cse_pose/setup.py ros2_ws/src/cse_pose_ros/setup.py \
	training/pyproject.toml tools/pyproject.toml tools/cse_pose_dev/ament_prefix.py \
	$(wildcard $(ROS_WHEELS) $(ROS_WHEELS)/*.whl) models ros2_ws/src/cse_pose_ros/launch ros2_ws/src/cse_pose_ros/config
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test lint demo train adapt eval bench bench-gpu bench-solver train-smoke int8 export clean

$(VENV)/.stamp: $(SETUP_INPUTS)
	bash scripts/setup.sh

setup: $(VENV)/.stamp  ## create .venv with ROS 2 wheels (PyPI + ROS_WHEELS), torch CPU, onnxruntime, open3d, pybullet (idempotent)

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

adapt: $(VENV)/.stamp  ## CATEGORY=<category> DATA=<from-bag --out> [STEPS=1000]: fine-tune models/<category>.onnx on your videos (self-supervised) -> out/adapt/<category>/, before/after on held-out frames (ADAPT_ARGS=...)
	@test -n "$(DATA)" || { echo "usage: make adapt CATEGORY=mug DATA=data/mine [STEPS=1000] (DATA: python -m cse_train from-bag ... --out DATA)"; exit 2; }
	$(PY) -m cse_train adapt --category $(CATEGORY) --data $(DATA) --steps $(STEPS) $(ADAPT_ARGS)

eval: $(VENV)/.stamp  ## every models/*.onnx on its held-out test splits (training's renderer; the lit split: pybullet's TinyRenderer, EVAL_ARGS='--lit-renderer open3d' for open3d's; the wide split: shapes beyond the training band) + baselines (a)(b)(c); tables in out/eval (EVAL_ARGS='--splits synthetic' for the first only)
	$(PY) -m cse_train eval-models --no-progress $(EVAL_ARGS)

bench: $(VENV)/.stamp  ## per-stage latency on oracle and real-network inputs (fp32, int8) vs the reference-equivalent peer; 30/100 Hz load test over DDS; memory over 10,000 frames (BENCH_ARGS=...)
	$(PY) -m cse_pose_dev.bench $(BENCH_ARGS)

bench-gpu: $(VENV)/.stamp  ## the same table on an NVIDIA GPU (installs onnxruntime-gpu + TensorRT into .venv if missing)
	bash scripts/bench_gpu.sh $(BENCH_ARGS)

bench-solver: $(VENV)/.stamp  ## our RANSAC-Umeyama vs plain Umeyama vs open3d RANSAC
	$(PY) -m cse_pose_dev.bench_solver

train-smoke: $(VENV)/.stamp  ## tiny synthetic set -> 250 CPU steps (small) -> export -> ONNX check -> eval (~5 min)
	$(PY) -m cse_train smoke --out out/smoke

int8: $(VENV)/.stamp  ## models/<category>.int8.onnx for every model (static INT8, ~20 s each here): the node then runs them on the CPU (parameter precision); QUANT_ARGS=--evaluate compares them with the float files
	$(PY) -m cse_train.quantize --models-dir models --out-dir models $(QUANT_ARGS)

export: $(VENV)/.stamp  ## CKPT=<checkpoint> -> models/<category>.onnx + .pt
	$(PY) -m cse_train export --checkpoint $(CKPT) --out-dir models

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

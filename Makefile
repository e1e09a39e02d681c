# Every target installs what it needs on a fresh machine: Python packages into .venv, Debian
# packages through apt when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo reads only the Fashion-MNIST data. The tests also need prometheus (a real Prometheus
# and promtool), libb64 (perf_analyzer) and chromium (report --screenshot): chromium and prometheus
# with their dependencies took minutes to install before a fresh clone's demo could start.
DEMO_DEBIAN_PACKAGES := dataset-fashion-mnist
DEBIAN_PACKAGES := $(DEMO_DEBIAN_PACKAGES) prometheus libb64-0d chromium
# The last perf_analyzer shipped inside a PyPI wheel; `resnet-serve bench --engine perf_analyzer` runs it.
PERF_ANALYZER_WHEEL := tritonclient==2.40.0
PERF_ANALYZER := $(BIN)/perf_analyzer

.PHONY: demo test test-unit test-integration lint docs install system-packages demo-packages perf-analyzer clean docs-pages

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on our machines' disk; installing it first keeps pip from
	# resolving "torch" to a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[embedded,openvino,dev]'
	touch $(STAMP)

# Only the binary is taken from the wheel (its Python modules would replace the newer tritonclient).
perf-analyzer: $(PERF_ANALYZER)

$(PERF_ANALYZER): | $(STAMP)
	rm -rf $(VENV)/perf-analyzer-wheel
	$(BIN)/pip download --quiet --no-deps $(PERF_ANALYZER_WHEEL) -d $(VENV)/perf-analyzer-wheel
	$(BIN)/python -c "import sys, zipfile; \
	  wheel = zipfile.ZipFile(sys.argv[1]); \
	  name = next(n for n in wheel.namelist() if n.endswith('.data/data/bin/perf_analyzer')); \
	  open(sys.argv[2], 'wb').write(wheel.read(name))" $(VENV)/perf-analyzer-wheel/*.whl $@.tmp
	chmod +x $@.tmp && mv $@.tmp $@
	rm -rf $(VENV)/perf-analyzer-wheel

# Installs the packages of $(1) that are missing.
define install-debian-packages
	@missing=""; for p in $(1); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
endef

system-packages:
	$(call install-debian-packages,$(DEBIAN_PACKAGES))

demo-packages:
	$(call install-debian-packages,$(DEMO_DEBIAN_PACKAGES))

demo: install demo-packages
	$(BIN)/resnet-serve demo

# The whole suite: the linter, the docs build, then the unit tests and the integration tests (a
# real tritonserver) in one pytest run, so session fixtures such as the trained ResNet-20 are made once.
test: lint docs system-packages perf-analyzer
	$(BIN)/python -m pytest -q tests/unit tests/integration

lint: install
	$(BIN)/ruff check resnet_serve tests benchmarks docs/_hooks

# The site goes into the virtualenv, so nothing is written into the tree; --strict fails on a
# broken link, a missing page or one left out of the nav. NO_MKDOCS_2_WARNING quiets
# mkdocs-material's notice about its end of life, printed on every build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site

test-unit: install system-packages
	$(BIN)/python -m pytest -q tests/unit

test-integration: install system-packages perf-analyzer
	$(BIN)/python -m pytest -q tests/integration

# Pages of docs/ generated from the code (a test fails when one is out of date).
docs-pages: install
	$(BIN)/python -c "from resnet_serve.triton.contract.document import contract_markdown; \
	  open('docs/backend-contract.md', 'w').write(contract_markdown())"
	$(BIN)/python -c "from resnet_serve.cli.reference import cli_reference_markdown; \
	  open('docs/cli.md', 'w').write(cli_reference_markdown())"

clean:
	rm -rf $(VENV) build *.egg-info demo-output demo-summary.json

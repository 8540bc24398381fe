# fibreflow.qfieldcloud: one-command setup and tests.
#
#   make setup   Docker engine + compose v2 + debootstrap (scripts/setup-host.sh), .venv/ with the pinned
#                requirements, the collections/ link that makes .venv/bin/ansible-* resolve
#                fibreflow.qfieldcloud from this tree, and ansible-test's offline get-pip stand-in.
#   make test    setup, then every test layer that exists; non-zero when any of them fails.
#   make help    every target with one line each.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
# One shell per recipe: recipes keep variables across lines and stop at the first failing line.
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
REQUIREMENTS := requirements-dev.txt
REQUIREMENTS_STAMP := $(VENV)/.requirements.sha256
COLLECTION_LINK := collections/ansible_collections/fibreflow/qfieldcloud
OUTPUT := tests/output
SANITY_PYTHON ?= 3.11
# ansible-test downloads get-pip from a host these machines cannot reach; it uses this cached copy instead.
GET_PIP_CACHE_DIR := $(HOME)/.ansible/test/cache

# Every tool runs from the venv: molecule, ansible-lint and ansible-test call ansible-* through PATH.
# ansible-* run from this directory read ./ansible.cfg (collections_path = ./collections) by themselves.
export PATH := $(BIN):$(PATH)

# Seconds elapsed since the EPOCHREALTIME value in the shell variable named $(1), one decimal.
elapsed = $$(awk "BEGIN { printf \"%.1f\", $$EPOCHREALTIME - $$$(1) }")
# Runs a command and prints "<label>: <seconds>s" after it. Usage: $(call timed,label,command)
define timed
step=$$EPOCHREALTIME; $(2); echo "$(1): $(call elapsed,step)s"
endef

# A test layer exists when its directory holds at least one test module.
has_tests = $(shell find $(1) -name 'test_*.py' -print -quit 2>/dev/null)
MOLECULE_SCENARIOS = $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml))
LINTABLE = $(wildcard roles playbooks)

.PHONY: help setup venv collections-link get-pip-standin test test-unit sanity lint test-integration \
	test-harness test-molecule test-disruptive test-order test-prometheus build changelog-lint demo samples clean docs test-docs release-venv test-importer test-matrix syntax-check standin-images

help:
	@echo 'make setup             install host tools, .venv, collections/ link, get-pip stand-in (idempotent)'
	@echo 'make test              setup + every test layer that exists (unit, sanity, lint, build, changelog,'
	@echo '                       integration, harness, molecule); fails when any layer fails'
	@echo 'make test-unit         pytest tests/unit'
	@echo 'make sanity            ansible-test sanity --local on a copy of the tree'
	@echo 'make lint              ansible-lint --profile production (roles, playbooks) and ruff'
	@echo 'make test-integration  pytest tests/integration (real Docker engine)'
	@echo 'make test-order        the integration suite reversed, from a clone of HEAD in a deep temporary path'
	@echo 'make test-harness      pytest tests/harness (the stand-in QFieldCloud)'
	@echo 'make test-molecule     every molecule scenario, with a throw-away ANSIBLE_HOME'
	@echo 'make build             build the collection tarball and prove it installs offline'
	@echo 'make changelog-lint    antsibull-changelog lint'
	@echo 'make test-prometheus   promtool check rules and promtool test rules on the shipped alert rules'
	@echo 'make docs              the documentation site (antsibull-docs, Sphinx) in tests/output/docs/html'
	@echo 'make test-docs         make docs, then check that every plugin, role and guide has its page'
	@echo 'make test-importer     galaxy-importer on the built tarball; fails on any warning'
	@echo 'make test-matrix       unit tests, sanity and syntax-check under each older supported ansible-core'
	@echo 'make syntax-check      ansible-playbook --syntax-check of every playbook'
	@echo 'make standin-images    build the stand-in QFieldCloud'\''s shared base and runtime images (once per recipe)'
	@echo 'make demo              the main job on the stand-in: break, diagnose, check, repair, verify'
	@echo 'make samples           docs/samples/: diagnose.yml output and a drift report of a broken stand-in'

# ---------------------------------------------------------------------------------------------------------
# setup

setup:
	@total=$$EPOCHREALTIME
	$(call timed,setup: time for host tools,scripts/setup-host.sh)
	$(call timed,setup: time for python venv,$(MAKE) venv)
	$(call timed,setup: time for collections/ link,$(MAKE) collections-link)
	$(call timed,setup: time for get-pip stand-in,$(MAKE) get-pip-standin)
	echo "setup: total $(call elapsed,total)s"

venv:
	@if [ ! -x $(VENV)/bin/python ]; then
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || {
	    echo "setup: ERROR: ansible-core 2.19 needs Python >= 3.11 on the controller; '$(PYTHON)' is" \
	      "$$($(PYTHON) -V 2>&1). Run 'make setup PYTHON=/path/to/python3.11'." >&2; exit 1; }
	  echo "setup: creating $(VENV)/ with $$($(PYTHON) -V)"
	  $(PYTHON) -m venv $(VENV)
	fi
	wanted=$$(sha256sum $(REQUIREMENTS) | cut -d' ' -f1)
	if [ "$$(cat $(REQUIREMENTS_STAMP) 2>/dev/null)" = "$$wanted" ]; then
	  echo "setup: $(VENV)/ already has $(REQUIREMENTS) installed"
	else
	  echo "setup: installing $(REQUIREMENTS) into $(VENV)/ (about a minute)"
	  $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(REQUIREMENTS)
	  echo "$$wanted" > $(REQUIREMENTS_STAMP)
	fi

# ansible.cfg sets collections_path = ./collections; this link makes the working tree the installed
# fibreflow.qfieldcloud for every ansible-* command run from the repository root.
collections-link:
	@mkdir -p $(dir $(COLLECTION_LINK))
	if [ "$$(readlink $(COLLECTION_LINK) 2>/dev/null)" != "../../.." ]; then
	  rm -rf $(COLLECTION_LINK)
	  ln -s ../../.. $(COLLECTION_LINK)
	  echo "setup: linked $(COLLECTION_LINK) -> ../../.."
	else
	  echo "setup: $(COLLECTION_LINK) -> ../../.. already"
	fi

# The file name carries the pip version ansible-test bootstraps (get_venv_packages() in ansible-test).
get-pip-standin:
	@pip_version=$$($(VENV)/bin/python -c 'import re, ansible_test._internal.python_requirements as r, inspect; \
	  print(re.search(r"pip=.([0-9.]+).", inspect.getsource(r.get_venv_packages)).group(1))')
	target=$(GET_PIP_CACHE_DIR)/get_pip_$${pip_version//./_}.py
	if cmp -s scripts/get_pip_standin.py "$$target"; then
	  echo "setup: $$target is the stand-in already"
	else
	  install -D -m 0644 scripts/get_pip_standin.py "$$target"
	  echo "setup: installed the get-pip $$pip_version stand-in at $$target"
	fi

# ---------------------------------------------------------------------------------------------------------
# support matrix

# The ansible-core releases the collection supports on the controller (meta/runtime.yml requires_ansible and the
# roles' min_ansible_version say the oldest). .venv/ holds the newest; each older one gets its own venv with the
# latest patch release of that line, and runs the unit tests and ansible-test sanity as `make test` does.
MATRIX_CORES ?= 2.18
MATRIX_REQUIREMENTS := requirements-matrix.txt

test-matrix:
	@failed=()
	for core in $(MATRIX_CORES); do
	  venv=$(OUTPUT)/matrix/ansible-core-$$core
	  if [ ! -x $$venv/bin/python ]; then $(PYTHON) -m venv $$venv; fi
	  wanted="$$core $$(sha256sum $(MATRIX_REQUIREMENTS) | cut -d' ' -f1)"
	  if [ "$$(cat $$venv/.requirements 2>/dev/null)" != "$$wanted" ]; then
	    echo "test-matrix: installing ansible-core $$core.* and $(MATRIX_REQUIREMENTS) into $$venv/"
	    $$venv/bin/python -m pip install --quiet --disable-pip-version-check "ansible-core~=$$core.0" \
	      -r $(MATRIX_REQUIREMENTS)
	    echo "$$wanted" > $$venv/.requirements
	  fi
	  version=$$($$venv/bin/ansible --version | sed -n 1p)
	  echo "=== test-matrix: $$version"
	  $(MAKE) get-pip-standin VENV=$$venv >/dev/null
	  for layer in test-unit sanity syntax-check; do
	    if $(MAKE) $$layer BIN=$(CURDIR)/$$venv/bin; then result=ok; else result=FAILED; failed+=("$$core:$$layer"); fi
	    echo "test-matrix: $$version $$layer $$result"
	  done
	done
	if [ $${#failed[@]} -gt 0 ]; then echo "test-matrix FAILED: $${failed[*]}" >&2; exit 1; fi

# Every playbook, and every task file of every role, parsed by this ansible-core: a keyword an older release does
# not know fails here, not on a field server. --syntax-check does not follow dynamic includes (include_tasks,
# include_role), so each task file is also imported statically, with import_role and tasks_from, in a generated
# playbook. community.docker comes from the `ansible` package of .venv/ (a matrix venv holds ansible-core alone).
SYNTAX_COLLECTIONS = ./collections:$(shell $(CURDIR)/$(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SYNTAX_PLAYBOOK := $(OUTPUT)/syntax-check/every-task-file.yml
syntax-check:
	@mkdir -p $(dir $(SYNTAX_PLAYBOOK))
	{ echo '- name: Every task file of every role'; echo '  hosts: all'; echo '  gather_facts: false'; echo '  tasks:'
	  for file in roles/*/tasks/*.yml; do
	    role=$$(basename "$$(dirname "$$(dirname "$$file")")"); name=$$(basename "$$file" .yml)
	    echo "    - name: $$role $$name"
	    echo "      ansible.builtin.import_role: {name: fibreflow.qfieldcloud.$$role, tasks_from: $$name}"
	  done; } > $(SYNTAX_PLAYBOOK)
	for playbook in playbooks/*.yml $(SYNTAX_PLAYBOOK); do
	  ANSIBLE_COLLECTIONS_PATH=$(SYNTAX_COLLECTIONS) $(BIN)/ansible-playbook --syntax-check -i localhost, "$$playbook" >/dev/null
	done
	echo "syntax-check: $$(ls playbooks/*.yml | wc -l) playbooks and $$(ls roles/*/tasks/*.yml | wc -l) task files parse under $$($(BIN)/ansible --version | sed -n 1p)"

# ---------------------------------------------------------------------------------------------------------
# documentation site

RELEASE_VENV := .venv-release
RELEASE_REQUIREMENTS := requirements-release.txt
DOCS_SRC := $(OUTPUT)/docs/src
DOCS_HTML := $(OUTPUT)/docs/html

# The documentation and release tools live in their own venv, built from PyPI on first use.
release-venv:
	@if [ ! -x $(RELEASE_VENV)/bin/python ]; then $(PYTHON) -m venv $(RELEASE_VENV); fi
	wanted=$$(sha256sum $(RELEASE_REQUIREMENTS) | cut -d' ' -f1)
	if [ "$$(cat $(RELEASE_VENV)/.requirements.sha256 2>/dev/null)" != "$$wanted" ]; then
	  echo "setup: installing $(RELEASE_REQUIREMENTS) into $(RELEASE_VENV)/ (about a minute)"
	  $(RELEASE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(RELEASE_REQUIREMENTS)
	  echo "$$wanted" > $(RELEASE_VENV)/.requirements.sha256
	fi

# The plugin and role pages come from the collection itself (antsibull-docs reads it through the collections/
# link, as ansible-doc does); the guides are docs/*.md; the picture is drawn from docs/pictures/playbooks.dot.
docs: collections-link release-venv
	@start=$$EPOCHREALTIME
	dot -Tsvg docs/pictures/playbooks.dot -o docs/pictures/playbooks.svg
	rm -rf $(DOCS_SRC) $(DOCS_HTML)
	mkdir -p $(DOCS_SRC)/collection $(DOCS_SRC)/pictures
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/collections PATH=$(CURDIR)/$(RELEASE_VENV)/bin:$$PATH \
	  $(RELEASE_VENV)/bin/antsibull-docs collection --use-current --squash-hierarchy \
	  --dest-dir $(DOCS_SRC)/collection fibreflow.qfieldcloud
	cp docs/site/conf.py docs/site/index.rst $(DOCS_SRC)/
	cp docs/problems.md docs/field-guide.md docs/operations.md docs/reliability.md $(DOCS_SRC)/
	cp docs/pictures/playbooks.svg $(DOCS_SRC)/pictures/
	$(RELEASE_VENV)/bin/sphinx-build -q -b html $(DOCS_SRC) $(DOCS_HTML)
	pages=$$(find $(DOCS_HTML) -name '*.html' -not -path '*/_static/*' | wc -l)
	echo "docs: $$pages pages in $(DOCS_HTML) in $(call elapsed,start)s"

test-docs: docs
	$(BIN)/pytest -q tests/docs

# galaxy-importer, Galaxy's own checks, on the tarball `make build` made (ansible-test off: it wants a
# container). Its ansible-lint finds community.docker in the ansible package of .venv-release/, as on Galaxy
# where the dependencies are installed. Any WARNING or ERROR line fails. Then ansible-builder's introspection of
# the installed tarball must find the collection's Python requirements (meta/execution-environment.yml), and
# `ansible-builder create` must turn ee/execution-environment.yml, beside the tarball, into a build context that
# holds the tarball and installs it and community.docker (the image is not built: that needs a registry).
test-importer: release-venv build
	@version=$$($(BIN)/python -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')
	cfg=$$(mktemp)
	trap 'rm -f "$$cfg"' EXIT
	printf '[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nRUN_ANSIBLE_LINT = True\n' > "$$cfg"
	status=0
	out=$$(GALAXY_IMPORTER_CONFIG=$$cfg PATH=$(CURDIR)/$(RELEASE_VENV)/bin:$$PATH \
	  $(RELEASE_VENV)/bin/python -m galaxy_importer.main $(OUTPUT)/build/fibreflow-qfieldcloud-$$version.tar.gz \
	  2>&1) || status=$$?
	rm -f importer_result.json  # galaxy-importer leaves its result in the working directory
	grep -v '^Loading ' <<< "$$out" || true
	if [ "$$status" -ne 0 ] || grep -qE '^(WARNING|ERROR)' <<< "$$out"; then
	  echo "test-importer: galaxy-importer failed (exit $$status) or warned" >&2; exit 1
	fi
	dest=$$(mktemp -d)
	trap 'rm -rf "$$cfg" "$$dest"' EXIT
	$(RELEASE_VENV)/bin/ansible-galaxy collection install --offline --no-deps --force -p "$$dest" \
	  $(OUTPUT)/build/fibreflow-qfieldcloud-$$version.tar.gz >/dev/null
	found=$$($(RELEASE_VENV)/bin/ansible-builder introspect --sanitize "$$dest")
	echo "$$found"
	for requirement in $$(grep -v '^#' meta/ee-requirements.txt | cut -d'>' -f1 | cut -d'=' -f1); do
	  grep -q "$$requirement" <<< "$$found" || { echo "test-importer: ansible-builder introspect misses $$requirement" >&2; exit 1; }
	done
	ee=$$(mktemp -d)
	trap 'rm -rf "$$cfg" "$$dest" "$$ee"' EXIT
	cp ee/execution-environment.yml $(OUTPUT)/build/fibreflow-qfieldcloud-$$version.tar.gz "$$ee/"
	created=$$($(RELEASE_VENV)/bin/ansible-builder create -f "$$ee/execution-environment.yml" -c "$$ee/context" \
	  --output-filename Containerfile 2>&1) || { echo "$$created" >&2; exit 1; }
	echo "$$created"
	ee_fail() { echo "test-importer: ansible-builder create: $$1" >&2; exit 1; }
	if grep -q 'No matches' <<< "$$created"; then ee_fail "an additional build file is missing"; fi
	test -f "$$ee/context/_build/collections/fibreflow-qfieldcloud-$$version.tar.gz" || ee_fail "no tarball in the context"
	grep -qE '^RUN ansible-galaxy collection install .* collections/fibreflow-qfieldcloud-\*\.tar\.gz$$' \
	  "$$ee/context/Containerfile" || ee_fail "the Containerfile does not install the tarball"
	refs="$$(grep -x 'ansible-core==.*' requirements-controller.txt) $$(grep -x 'ansible-runner==.*' requirements-dev.txt)"
	grep -qxF "ARG ANSIBLE_INSTALL_REFS=\"$$refs\"" "$$ee/context/Containerfile" \
	  || ee_fail "the Containerfile does not install $$refs (the pins of requirements-controller.txt and -dev.txt)"
	$(BIN)/python -c 'import sys, yaml; names = [c["name"] for c in yaml.safe_load(open(sys.argv[1]))["collections"]]; \
	  sys.exit(names != ["community.docker"])' "$$ee/context/_build/requirements.yml" \
	  || ee_fail "the context's requirements.yml does not name community.docker"

# ---------------------------------------------------------------------------------------------------------
# tests

# Runs every layer that exists, even after one fails, then prints a summary and fails when any failed.
# Layers that spend much of their time waiting run side by side in lanes, each lane one layer after the other, so a
# group takes about its longest lane instead of the sum; a lane's output is printed whole, layer by layer, once the
# group ends. The groups, in order:
#   1. the layers that start no stand-in, in two lanes (pip, ansible-test's start-up and Sphinx leave the cores
#      half idle): sanity, syntax-check and test-matrix share files and stay in one lane, as do build before
#      test-importer and the release venv's test-docs and test-importer; test-unit goes with the shorter lane;
#      beside them, a third lane builds the stand-in's shared images (on a fresh machine debootstrap spends
#      about a minute fetching Debian packages with the cores idle; the next groups find the images built);
#   2. test-integration beside test-harness and test-molecule: each starts stacks of its own names and waits on
#      them much of the time (alone, the integration layer kept 1.5 of the 2 cores busy, the harness and
#      molecule 1.4: one after the other they took 883 s + 280 s);
#   3. test-disruptive alone: it restarts the Docker daemon.
STATIC_LANES := "sanity syntax-check test-matrix" "test-unit lint build changelog-lint test-prometheus test-docs test-importer" \
  standin-images
test: setup
	@failed=()
	summary=()
	logs=$$(mktemp -d "$${TMPDIR:-/tmp}/fibreflow-qfieldcloud-layers.XXXXXX")
	trap 'rm -rf "$$logs"' EXIT
	# lanes "<layers of lane 1>" "<layers of lane 2>" ...: the lanes at once, then every layer's output and result.
	lanes() {
	  local lane layer start result seconds
	  echo "=== at once: $$(printf '[%s] ' "$$@")"
	  start=$$EPOCHREALTIME
	  for lane in "$$@"; do
	    ( for layer in $$lane; do
	        local began=$$EPOCHREALTIME outcome=ok
	        $(MAKE) "$$layer" > "$$logs/$$layer.log" 2>&1 < /dev/null || outcome=FAILED
	        echo "$$outcome $(call elapsed,began)" > "$$logs/$$layer.result"
	      done ) &
	  done
	  wait
	  echo "=== the lanes took $(call elapsed,start)s"
	  for lane in "$$@"; do
	    for layer in $$lane; do
	      echo "=== make $$layer"
	      cat "$$logs/$$layer.log"
	      read -r result seconds < "$$logs/$$layer.result" || { result=FAILED; seconds=0; }
	      if [ "$$result" != ok ]; then failed+=("$$layer"); fi
	      summary+=("$$(printf '%-18s %-7s %7ss  (beside another lane)' "$$layer" "$$result" "$$seconds")")
	    done
	  done
	}
	alone() {
	  local start result
	  echo "=== make $$1"
	  start=$$EPOCHREALTIME
	  if $(MAKE) "$$1"; then result=ok; else result=FAILED; failed+=("$$1"); fi
	  summary+=("$$(printf '%-18s %-7s %7ss' "$$1" "$$result" "$(call elapsed,start)")")
	}
	lanes $(STATIC_LANES)
	beside=()
	$(if $(call has_tests,tests/integration),beside+=(test-integration))
	$(if $(call has_tests,tests/harness),beside+=(test-harness))
	$(if $(MOLECULE_SCENARIOS),beside+=(test-molecule))
	if [ $${#beside[@]} -gt 0 ]; then lanes "$${beside[@]}"; fi
	$(if $(shell grep -rl 'pytest.mark.disruptive' tests/integration 2>/dev/null),alone test-disruptive)
	echo "=== summary"
	printf '%s\n' "$${summary[@]}"
	if [ $${#failed[@]} -gt 0 ]; then echo "FAILED: $${failed[*]}" >&2; exit 1; fi
	echo "all layers passed"

# pytest exits 5 when it collects no test: that is a failure here, like any other non-zero status.
test-unit:
	$(BIN)/pytest tests/unit

# The stand-in's shared base image (debootstrap) and runtime image, built once per recipe; `standin up` builds
# them too when they are missing.
standin-images:
	$(BIN)/python tests/harness/standin images

# The Docker-backed suites run in parallel (pytest-xdist, whole files per worker: a file shares its private
# stacks between its tests). Each worker has its own shared healthy stand-in. PYTEST_WORKERS=0 runs serially.
# Tests marked `disruptive` (restarting the Docker daemon) run afterwards, alone on the engine.
# FIBREFLOW_RUN_LOG=<file> appends one JSON line per playbook run, module run and stack start (with its test and
# seconds): where the layer's time goes.
# Three workers: four were slower on these 2-core machines (the layer is CPU-bound: 25.6 min against 23.4 min).
PYTEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test-integration:
	$(BIN)/pytest $(XDIST) --durations=40 -m "not disruptive" tests/integration

# Restarts the Docker daemon: the last layer of `make test`, alone on the engine. Tests are ordered by this marker,
# never by file name: tests/conftest.py also puts disruptive tests after all others in any session.
test-disruptive:
	$(BIN)/pytest -m disruptive tests/integration

# The integration suite where nothing is as in this checkout: a fresh clone of HEAD (committed files only: commit
# first) in a deep temporary directory, so that every path in ansible's output is longer (messages wrap elsewhere),
# with the tests run last to first (--test-order in tests/conftest.py: files reversed, and the tests of each file).
# A test that needs an earlier one of its file, or a phrase that only fits on one line here, fails there.
# It reuses this checkout's .venv (nothing is installed; the clone gets its own collections/ link), leaves the
# disruptive layer out like test-integration, and removes the clone at the end.
#   ORDER=random:SEED   a reproducible shuffle instead;  ORDER_TESTS=tests/integration/test_x.py   some files only
ORDER ?= reversed
ORDER_TESTS ?= tests/integration
DEEP_PATH := a/very/deep/path/that/makes/every/line/of/ansible/output/longer/than/in/a/usual/checkout
test-order:
	@git diff --quiet HEAD -- . || echo "test-order: uncommitted changes are not tested: the clone is of HEAD" >&2
	work=$$(mktemp -d "$${TMPDIR:-/tmp}/fibreflow-qfieldcloud-order.XXXXXX")
	trap 'rm -rf "$$work"' EXIT
	deep=$$work/$(DEEP_PATH)/qfieldcloud
	git clone --quiet --no-hardlinks "$(CURDIR)" "$$deep"
	cd "$$deep"
	mkdir -p $(dir $(COLLECTION_LINK))
	ln -s ../../.. $(COLLECTION_LINK)
	echo "test-order: $(ORDER) order, HEAD $$(git rev-parse --short HEAD), from $$deep ($${#deep} characters)"
	$(BIN)/pytest $(XDIST) -p no:cacheprovider --durations=40 -m "not disruptive" --test-order=$(ORDER) $(ORDER_TESTS)

test-harness:
	$(BIN)/pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n 3 --dist load) --durations=10 tests/harness

# ansible-test needs the collection in a real (not symlinked) .../ansible_collections/NS/NAME directory, so
# it runs on a copy holding what git would see (tracked and untracked, minus .gitignore: no .venv,
# collections/, tests/output). The copy lives outside this repository: ansible-test looks for .git in every
# parent directory and would otherwise list the copy's files through our git, which ignores tests/output.
# --docker cannot work here (it pulls an image), hence --local. Its per-test virtualenvs are cached in
# ~/.ansible/test/venv: built once, with pip bootstrapped offline by the get-pip stand-in and the sanity
# requirements taken from PyPI; later runs need no network at all.
sanity:
	@work=$$(mktemp -d "$${TMPDIR:-/tmp}/fibreflow-qfieldcloud-sanity.XXXXXX")
	trap 'rm -rf "$$work"' EXIT
	tree=$$work/ansible_collections/fibreflow/qfieldcloud
	mkdir -p "$$tree"
	# tests/harness/ is not Ansible content: it is the stand-in QFieldCloud (programs that run inside its
	# Debian containers, with their own shebangs and Python); it is tested by tests/harness and ruff.
	git ls-files -z --cached --others --exclude-standard -- . ':!tests/harness' \
	  | while IFS= read -r -d '' f; do if [ -e "$$f" ]; then printf '%s\0' "$$f"; fi; done \
	  | tar --null -T - -cf - | tar -xf - -C "$$tree"
	cd "$$tree"
	$(BIN)/ansible-test sanity --local --python $(SANITY_PYTHON) --color no $(SANITY_ARGS)

# The alert rules shipped in prometheus/: valid for Prometheus, and each alert fires when (and only when) its
# unit test says so. promtool comes from Debian's prometheus package (scripts/setup-host.sh).
test-prometheus:
	promtool check rules prometheus/*.yml
	promtool test rules tests/prometheus/*.test.yml

lint:
	@$(if $(LINTABLE),$(BIN)/ansible-lint --profile production $(LINTABLE),echo 'lint: no roles/ or playbooks/ yet: ansible-lint skipped')
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Each scenario gets an empty ANSIBLE_HOME so a stale copy of the collection can never shadow this tree.
test-molecule:
	@$(if $(MOLECULE_SCENARIOS),,echo 'test-molecule: no scenario under molecule/' >&2; exit 1)
	home=$$(mktemp -d)
	trap 'rm -rf "$$home"' EXIT
	for scenario in $(MOLECULE_SCENARIOS); do
	  echo "=== molecule test -s $$scenario"
	  rm -rf "$$home" && mkdir "$$home"
	  ANSIBLE_HOME=$$home $(BIN)/molecule test -s "$$scenario"
	done

build:
	@version=$$($(BIN)/python -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')
	tarball=$(OUTPUT)/build/fibreflow-qfieldcloud-$$version.tar.gz
	$(BIN)/ansible-galaxy collection build --force --output-path $(OUTPUT)/build
	dest=$$(mktemp -d)
	trap 'rm -rf "$$dest"' EXIT
	# Only $$dest counts as installed: the working tree (collections/ link) must not satisfy the install.
	export ANSIBLE_COLLECTIONS_PATH=$$dest
	$(BIN)/ansible-galaxy collection install --offline --no-deps --force -p "$$dest" "$$tarball"
	installed=$$dest/ansible_collections/fibreflow/qfieldcloud
	test -f "$$installed/MANIFEST.json" || { echo "build: $$tarball installed without MANIFEST.json" >&2; exit 1; }
	readme=$$($(BIN)/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["collection_info"]["readme"])' \
	  "$$installed/MANIFEST.json")
	test -f "$$installed/$$readme" || { echo "build: the tarball lacks $$readme, which galaxy.yml names as readme" >&2; exit 1; }
	$(BIN)/ansible-galaxy collection list fibreflow.qfieldcloud | grep -q "$$version"
	echo "build: $$tarball ($$(du -h "$$tarball" | cut -f1)) installs as fibreflow.qfieldcloud $$version"

# CHANGELOG.md must be what changelogs/changelog.yaml generates (antsibull-changelog release wrote both).
changelog-lint:
	@$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
	kept=$$(mktemp)
	trap 'rm -f "$$kept"' EXIT
	cp CHANGELOG.md "$$kept"
	$(BIN)/antsibull-changelog generate
	if ! cmp -s CHANGELOG.md "$$kept"; then
	  cp "$$kept" CHANGELOG.md
	  echo "changelog-lint: CHANGELOG.md is not what changelogs/changelog.yaml generates: run antsibull-changelog generate" >&2
	  exit 1
	fi
	echo "changelog-lint: CHANGELOG.md matches changelogs/changelog.yaml"

# The README's first command: a stand-in broken like the field guide, then diagnose, --check, repair, verify.
# DEMO_KEEP=1 keeps the stand-in (named DEMO_NAME, default demo).
demo: setup
	scripts/demo.sh

# The real outputs the README shows (docs/samples/), from a broken stand-in.
samples: setup
	scripts/samples.sh

clean:
	rm -rf $(OUTPUT)/build .pytest_cache .ruff_cache

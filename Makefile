# xen.pci: build, test and demo entry points.
#
#   make demo    converge a simulated Xen host (tools/xensim/scenarios/demo.yaml) with the
#                rollout playbook, run it again (changed=0), print the report
#   make test    every test layer (sanity, changelog, units, sim-tests, robustness, lint,
#                docs, integration, matrix, molecule, ecosystem, harness, xen: real Xen under QEMU);
#                fails if any layer fails
#   make docs    the documentation site in build/docs/html (linted, built, checked in Chromium)
#
# Both install what they need (apt packages, a pinned Python 3.12 venv) and are
# fast when nothing changed: the venv is keyed on the hash of the requirements
# files and apt is skipped when every package is already installed.
#
# Generated state (venv, ansible-test's trees and venvs) lives outside the work
# tree, in CACHE: the tree holds only sources, and a CI clone on the same
# machine reuses the venv.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT := $(CURDIR)
CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/xen-pci

# The controller interpreter: pyenv's real binary, never a pyenv shim (shims
# re-dispatch on .python-version and confuse ansible-test's interpreter lookup).
PYTHON_BASE ?= $(firstword $(wildcard /root/.pyenv/versions/3.12.*/bin/python3.12) $(shell command -v python3.12))

REQUIREMENTS := requirements/controller.txt requirements/constraints.txt
REQ_HASH := $(shell cat $(REQUIREMENTS) | sha256sum | cut -c1-16)
VENV ?= $(CACHE)/venv-py3.12-$(REQ_HASH)
VENV_STAMP := $(VENV)/.xen-pci-requirements-$(REQ_HASH)

# Real interpreters of every Python ansible-test knows (3.9+ for module code,
# 3.12+ for controller code), linked here so sanity's compile/import tests run
# module_utils on the Pythons our target hosts have.
PYBIN := $(CACHE)/pybin
# ansible-test only works on a tree under .../ansible_collections/<ns>/<name>:
# tools/make/tree.sh builds them here, one place per work tree.
COLLECTION_TREE := $(CACHE)/trees/$(shell printf %s '$(ROOT)' | sha256sum | cut -c1-12)

export XEN_PCI_ROOT := $(ROOT)
export XEN_PCI_CACHE := $(CACHE)
export XEN_PCI_VENV := $(VENV)
export XEN_PCI_PYBIN := $(PYBIN)
export XEN_PCI_COLLECTION_TREE := $(COLLECTION_TREE)
export PATH := $(VENV)/bin:$(PYBIN):$(PATH)
# No bytecode in the work tree (sanity would walk __pycache__ of a copy without .git).
export PYTHONDONTWRITEBYTECODE := 1

APT_PACKAGES := xenstore-utils qemu-system-x86 libfuse2 fuse3 shellcheck rsync git

.PHONY: help deps apt venv pybin sanity units sim-tests robustness lint changelog-lint \
        docs integration matrix molecule ecosystem harness xen xen-image test demo build ee-context clean clean-cache

help:
	@sed -n '3,8p' Makefile | sed 's/^# \{0,1\}//'
	@echo 'other targets: deps venv sanity changelog-lint units sim-tests robustness lint docs integration matrix molecule ecosystem harness xen xen-image build ee-context clean clean-cache'

## --- environment -----------------------------------------------------------

apt:
	@tools/make/apt-deps.sh $(APT_PACKAGES)

# Order-only: the stamp's name carries the requirements' hash, so a fresh
# clone (new mtimes) reuses the venv and a changed file makes a new stamp.
$(VENV_STAMP): | $(REQUIREMENTS)
	@PYTHON_BASE='$(PYTHON_BASE)' tools/make/venv.sh '$@'

venv: $(VENV_STAMP)

pybin: $(VENV_STAMP)
	@tools/make/pybin.sh

deps: apt venv pybin

## --- test layers -----------------------------------------------------------

sanity: deps
	@tools/make/sanity.sh

changelog-lint: deps
	cd '$(ROOT)' && antsibull-changelog lint

units: deps
	@tools/make/units.sh

sim-tests: deps
	@tools/make/pytest-layer.sh sim-tests tools/xensim/tests

robustness: deps
	@tools/make/robustness.sh

lint: deps
	@tools/make/lint.sh

# The documentation site (tools/make/docs.sh): antsibull-docs lint, the RST
# and the Sphinx HTML in build/docs, checked in headless Chromium.
DOCS_APT := chromium fonts-dejavu-core
docs: deps
	@tools/make/apt-deps.sh $(DOCS_APT)
	@tools/make/docs.sh

integration: deps
	@tools/make/integration.sh

# The older ansible-core releases meta/runtime.yml claims (requirements/matrix/,
# a cached venv each): units, integration and sanity of the oldest; the
# integration targets under the managed hosts' Pythons (tools/make/matrix.sh).
matrix: deps
	@PYTHON_BASE='$(PYTHON_BASE)' tools/make/matrix.sh

molecule: deps
	@tools/make/molecule.sh

# The collection in an execution environment's build context, run by
# ansible-runner as AWX runs it, and the molecule template on xensim's wheel.
ecosystem: deps
	@tools/make/ecosystem.sh

# Every layer runs even when an earlier one fails, so one run shows all
# failures; the exit status is non-zero if any failed.
## --- real Xen (QEMU TCG): tests/xenvm -------------------------------------
# Builds (or reuses) the dom0 image, boots Xen 4.17 under QEMU and runs the
# collection's core in dom0 next to xl. Skips loudly when QEMU or the image
# cannot be had.
XENVM_APT := qemu-system-x86 mmdebstrap kmod e2fsprogs openssh-client
XENVM_TIMEOUT ?= 1500

xen-image: deps
	@tools/make/apt-deps.sh $(XENVM_APT)
	@timeout 900 python3 tests/xenvm/build_image.py

# XENVM_TIMEOUT bounds the whole layer, image build included; the harness
# paces its boot against the same deadline (tools/make/xen.sh). SIGKILL after
# 30 s more: QEMU dies with its owner then too (PR_SET_PDEATHSIG).
# -vv (pytest-layer.sh passes -q): every real-Xen step by name in the CI log.
# The artifacts of the last run of this work tree: one directory per work
# tree (a CI clone and a developer's checkout share CACHE and may run at once).
XENVM_LAST := $(CACHE)/xenvm/artifacts/last-$(shell printf %s '$(ROOT)' | sha256sum | cut -c1-12)
xen: deps
	@tools/make/apt-deps.sh $(XENVM_APT)
	@rm -rf '$(XENVM_LAST)'
	@XENVM_TIMEOUT=$(XENVM_TIMEOUT) XENVM_ARTIFACTS='$(XENVM_LAST)' \
	    timeout --kill-after=30 $(XENVM_TIMEOUT) tools/make/xen.sh -rs -vv --durations=8

# The test harness's own tests (tests/harness): the real-Xen VM dies with its
# owner on every path (signals, SIGKILL, timeout, stale pidfiles). QEMU only,
# no image: seconds.
harness: deps
	@tools/make/pytest-layer.sh harness tests/harness -rs

TEST_LAYERS := sanity changelog-lint units sim-tests robustness lint docs integration matrix molecule ecosystem harness xen
test: deps
	@tools/make/run-layers.sh $(TEST_LAYERS)

## --- demo ------------------------------------------------------------------

DEMO_SCENARIO ?= tools/xensim/scenarios/demo.yaml
demo: deps
	@tools/make/demo.sh '$(DEMO_SCENARIO)'

## --- artifact --------------------------------------------------------------

# The collection tarball (galaxy.yml's build_ignore keeps development files out).
build: venv
	ansible-galaxy collection build --force --output-path build/

# The build context of an execution environment with xen.pci (Containerfile,
# _build/ with the artifact) in build/ee/context, from meta/ee/execution-environment.yml;
# build the image with `podman build build/ee/context` where there is an engine.
ee-context: venv
	@tools/make/ee-context.sh build/ee

## --- housekeeping ----------------------------------------------------------

clean:
	rm -rf tests/output .ansible build changelogs/.plugin-cache.yaml
	find . -name __pycache__ -type d -prune -exec rm -rf {} + || true
	find . -name .pytest_cache -type d -prune -exec rm -rf {} + || true
	find . -name .hypothesis -type d -prune -exec rm -rf {} + || true

# Drops the venvs, trees and ansible-test venvs of every checkout on this machine.
clean-cache:
	rm -rf '$(CACHE)'

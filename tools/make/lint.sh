#!/usr/bin/env bash
# ansible-lint with the production profile (.ansible-lint). It must run, and
# pass, even while the collection has no roles or playbooks: then it still
# checks galaxy.yml, meta/runtime.yml, changelogs and every YAML file.
set -euo pipefail
cd "$XEN_PCI_ROOT"
# ansible-lint caches collections it installs in .ansible/ of the project; it
# is git-ignored. --offline: never ask Galaxy (no internet here).
exec ansible-lint --offline --nocolor "$@"

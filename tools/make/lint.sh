#!/usr/bin/env bash
# ansible-lint with the production profile (.ansible-lint). It must run, and
# pass, even while the collection has no roles or playbooks: then it still
# checks galaxy.yml, meta/runtime.yml, changelogs and every YAML file.
set -euo pipefail
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"
# The role and playbooks use xen.pci's own modules and role: ansible-lint
# must find the collection under an ansible_collections/ path.
link_tree >/dev/null
export ANSIBLE_COLLECTIONS_PATH=$XEN_PCI_COLLECTION_TREE/link
cd "$XEN_PCI_ROOT"
# ansible-lint caches collections it installs in .ansible/ of the project; it
# is git-ignored. --offline: never ask Galaxy (no internet here).
exec ansible-lint --offline --nocolor "$@"

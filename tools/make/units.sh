#!/usr/bin/env bash
# ansible-test units over tests/unit on the controller venv's Python 3.12
# (--local: --venv would download a pip bootstrap from the internet), in a
# synced copy of the tree (tools/make/tree.sh says why).
set -euo pipefail
# shellcheck source=tools/make/layer-lib.sh
source "$XEN_PCI_ROOT/tools/make/layer-lib.sh"
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"
require_tests units "$XEN_PCI_ROOT/tests/unit" || exit 0
collection=$(copy_tree)
echo "units: running in $collection (a copy of $XEN_PCI_ROOT)"
ANSIBLE_TEST_CONTENT_ROOT=$collection exec "$XEN_PCI_ROOT/tools/make/ansible-test.sh" units --local --python 3.12 --color no "$@"

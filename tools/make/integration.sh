#!/usr/bin/env bash
# ansible-test integration targets (tests/integration/targets/*), on the
# controller (--local), once there are any. Same tree choice as sanity.
set -euo pipefail
# shellcheck source=tools/make/layer-lib.sh
source "$XEN_PCI_ROOT/tools/make/layer-lib.sh"
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"
require_tests integration "$XEN_PCI_ROOT/tests/integration/targets" -path '*/tasks/main.yml' || exit 0
if is_git_root; then
    collection=$(link_tree)
else
    collection=$(copy_tree)
fi
ANSIBLE_TEST_CONTENT_ROOT=$collection exec "$XEN_PCI_ROOT/tools/make/ansible-test.sh" integration --local --python 3.12 --color no --continue-on-error "$@"

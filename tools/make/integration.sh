#!/usr/bin/env bash
# ansible-test integration targets (tests/integration/targets/*), on this
# machine, once there are any. Same tree choice as sanity.
# The targets are context/target: the controller (ansible-playbook and the
# simulator) runs on the controller venv's Python 3.12, the modules on a
# managed host's Python: XEN_PCI_HOST_PYTHON (default 3.11, Debian
# bookworm's), a venv with pyxs made by tools/make/host-python.sh.
# XEN_PCI_COPY_TREE=1 runs in a copy of the work tree even in a git checkout
# (parallel runs each need their own tests/output and inventory).
set -euo pipefail
# shellcheck source=tools/make/layer-lib.sh
source "$XEN_PCI_ROOT/tools/make/layer-lib.sh"
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"
require_tests integration "$XEN_PCI_ROOT/tests/integration/targets" -path '*/tasks/main.yml' || exit 0
host_python=$("$XEN_PCI_ROOT/tools/make/host-python.sh" "${XEN_PCI_HOST_PYTHON:-3.11}")
host_version=$("$host_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if is_git_root && [[ ${XEN_PCI_COPY_TREE:-0} != 1 ]]; then
    collection=$(link_tree)
else
    collection=$(copy_tree)
fi
echo "integration: ansible-core $(python -c 'from ansible.release import __version__ as v; print(v)'), modules on the host's Python $host_version ($host_python)"
ANSIBLE_TEST_CONTENT_ROOT=$collection exec "$XEN_PCI_ROOT/tools/make/ansible-test.sh" integration \
    --controller origin:python=3.12 --target "controller:python=$host_version@$host_python" \
    --color no --continue-on-error "$@"

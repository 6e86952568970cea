#!/usr/bin/env bash
# molecule scenarios of the collection (extensions/molecule/<scenario>/), once
# there are any. The `xen` scenario needs the real-Xen VM: the xen layer runs
# it on its own VM (tests/xenvm/test_molecule_xen.py), not this one;
# MOLECULE_SCENARIOS names the ones that run here.
set -euo pipefail
# shellcheck source=tools/make/layer-lib.sh
source "$XEN_PCI_ROOT/tools/make/layer-lib.sh"
require_tests molecule "$XEN_PCI_ROOT/extensions/molecule" -name molecule.yml || exit 0
cd "$XEN_PCI_ROOT/extensions"
for scenario in ${MOLECULE_SCENARIOS:-default}; do
    if [[ ! -f molecule/$scenario/molecule.yml ]]; then
        echo "molecule: scenario '$scenario' does not exist" >&2
        exit 1
    fi
    molecule test -s "$scenario"
done

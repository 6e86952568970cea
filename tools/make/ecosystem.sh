#!/usr/bin/env bash
# The ecosystem layer (tests/ecosystem): xen.pci as its users' tools see it,
# the collection artifact in an execution environment's build context
# (ansible-builder create), the rollout run by ansible-runner as AWX runs it,
# and the molecule scenario template against xensim installed from its wheel.
# No PYTHONPATH: the tests start every tool in the environment it needs.
# pytest's temporary files go to a directory of this run (not the shared
# /tmp/pytest-of-*), removed at the end.
set -euo pipefail
base=$(mktemp -d /tmp/xen-pci-ecosystem.XXXXXX)
cleanup() {
    # The tests keep their simulated hosts elsewhere; never remove through a mount.
    if awk -v d="$base/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        echo "ecosystem: a mount is left under $base; not removing it" >&2
        return
    fi
    rm -rf "$base"
}
trap 'cleanup; exit 130' INT TERM
status=0
"$XEN_PCI_ROOT/tools/make/pytest-layer.sh" ecosystem tests/ecosystem --basetemp="$base/pytest" -rs --durations=8 "$@" \
    || status=$?
cleanup
exit "$status"

#!/usr/bin/env bash
# ansible-test sanity over the whole tree (plugins, tests, tools/xensim), offline,
# with no ignore files: every finding is fixed in the code.
set -euo pipefail
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"

for ignore in "$XEN_PCI_ROOT"/tests/sanity/ignore-*.txt; do
    if [[ -e $ignore ]]; then
        echo "sanity: ignore files are not allowed, fix the code instead: $ignore" >&2
        exit 1
    fi
done

if is_git_root && [[ ${XEN_PCI_COPY_TREE:-0} != 1 ]]; then
    collection=$(link_tree)
else
    # ansible-test would walk the directory, caches and venvs included
    # (XEN_PCI_COPY_TREE=1: a run beside others, tools/make/matrix.sh).
    collection=$(copy_tree)
    echo "sanity: checking a clean copy of $XEN_PCI_ROOT in $collection"
fi

# Without --python ansible-test runs each test on every supported Python found
# on PATH (tools/make/pybin.sh links them) and skips the missing ones.
ANSIBLE_TEST_CONTENT_ROOT=$collection exec "$XEN_PCI_ROOT/tools/make/ansible-test.sh" sanity --color no "$@"

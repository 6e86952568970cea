#!/usr/bin/env bash
# Runs ansible-test in the collection tree $ANSIBLE_TEST_CONTENT_ROOT (made by
# tools/make/tree.sh) with:
# - the content root named explicitly: when the tree is a symlink to the work
#   tree, getcwd() resolves it to a path outside ansible_collections/;
# - a private HOME: ansible-test keeps its sanity venvs and its pip bootstrap
#   script under ~/.ansible/test, and two runs on one machine (a developer's
#   and a CI clone's, or ad-hoc runs) that create the same venv at once delete
#   each other's half-built venvs. Our HOME keeps the user's pip settings
#   (this machine's package index) by linking them.
set -euo pipefail
export ANSIBLE_TEST_CONTENT_ROOT=${ANSIBLE_TEST_CONTENT_ROOT:?set by the caller}
test_home=$XEN_PCI_CACHE/ansible-test-home
mkdir -p "$test_home/.config" "$test_home/.ansible/test/cache"
for conf in .config/pip .pip .gitconfig; do
    if [[ -e $HOME/$conf && ! -e $test_home/$conf ]]; then
        ln -sfn "$HOME/$conf" "$test_home/$conf"
    fi
done
export HOME=$test_home
cd "$ANSIBLE_TEST_CONTENT_ROOT"
exec ansible-test "$@"

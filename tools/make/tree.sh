# shellcheck shell=bash
# Collection trees for ansible-test, which only runs on a directory whose path
# ends in ansible_collections/xen/pci (and checks, in units, that every test
# file's real path lies under it):
#
# link_tree: a symlink to the work tree. Enough for sanity when the work tree
#   is a git checkout (ansible-test lists files with git; results and
#   tests/output land in the work tree).
# copy_tree: an rsync'd copy of the work tree without its .gitignore'd files,
#   with its own git index. For units (pytest resolves the symlink and then
#   refuses the real path) and for sanity of a tree without .git (which
#   ansible-test would walk, caches included). Synced before every run.
#
# Both print the collection root they prepared.

link_tree() {
    local root=$XEN_PCI_COLLECTION_TREE/link/ansible_collections/xen/pci
    mkdir -p "$(dirname "$root")"
    ln -sfn "$XEN_PCI_ROOT" "$root"
    echo "$root"
}

copy_tree() {
    local root=$XEN_PCI_COLLECTION_TREE/copy/ansible_collections/xen/pci
    mkdir -p "$root"
    # Excluded paths are also kept from --delete: the copy keeps its .git and
    # its tests/output between runs.
    rsync -a --delete --filter=':- .gitignore' --exclude=/.git "$XEN_PCI_ROOT/" "$root/" >&2
    if [[ ! -d $root/.git ]]; then
        git -C "$root" init -q
    fi
    git -C "$root" add -A
    echo "$root"
}

# is_git_root: true when the work tree is the top of a git checkout.
is_git_root() {
    [[ $(git -C "$XEN_PCI_ROOT" rev-parse --show-toplevel 2>/dev/null) == "$(realpath "$XEN_PCI_ROOT")" ]]
}

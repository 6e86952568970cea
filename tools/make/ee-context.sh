#!/usr/bin/env bash
# ee-context.sh DIR: the build context of an execution environment (EE) with
# xen.pci, written without a container engine:
#  1. builds the collection artifact into DIR (galaxy.yml's build_ignore
#     keeps development files out);
#  2. puts the EE definition (meta/ee/execution-environment.yml) beside it;
#  3. runs `ansible-builder create`, which writes DIR/context (Containerfile,
#     _build/ with the collection's artifact and the galaxy requirements).
# Then, where there is an engine: podman build --tag xen-pci-ee DIR/context
# (or `ansible-builder build --file DIR/execution-environment.yml`).
set -euo pipefail
out=${1:?usage: ee-context.sh DIR}
root=${XEN_PCI_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# An artifact of another version left in DIR would be copied into the
# context too (the definition takes xen-pci-*.tar.gz): start clean.
rm -rf "$out/context" "$out"/xen-pci-*.tar.gz
ansible-galaxy collection build --force --output-path "$out" "$root" >/dev/null
cp "$root/meta/ee/execution-environment.yml" "$out/execution-environment.yml"
ansible-builder create --file "$out/execution-environment.yml" --context "$out/context" \
    --output-filename Containerfile --verbosity 1 >&2
echo "$out/context"

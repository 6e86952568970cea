#!/usr/bin/env bash
# run-layers.sh LAYER...: runs `make LAYER` for each layer, all of them even
# after a failure (one run shows every broken layer), prints a summary and
# exits non-zero if any layer failed. A layer that printed "LAYER: SKIPPED"
# (no tests yet, see layer-lib.sh) counts as skipped. Each layer is bounded
# (XEN_PCI_LAYER_TIMEOUT seconds, default 1800): a hung test fails its layer
# instead of eating CI's whole budget. A layer may say more in the summary
# (the xen layer: its image, boot and test times) by writing lines to the
# file XEN_PCI_LAYER_NOTES names.
set -uo pipefail
limit=${XEN_PCI_LAYER_TIMEOUT:-1800}
cd "$XEN_PCI_ROOT" || exit 1
log=$(mktemp)
notes=$(mktemp -d)
trap 'rm -rf "$log" "$notes"' EXIT
declare -A state seconds
passed=0 failed=0 skipped=0
for layer in "$@"; do
    echo
    echo "=== make $layer"
    start=$SECONDS
    # timeout signals make's whole process group (the layer's test processes too).
    XEN_PCI_LAYER_NOTES=$notes/$layer timeout --kill-after=30 "$limit" make --no-print-directory "$layer" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    if ((status == 0)) && grep -q "^$layer: SKIPPED" "$log"; then
        state[$layer]=skipped
        skipped=$((skipped + 1))
    elif ((status == 0)); then
        state[$layer]=passed
        passed=$((passed + 1))
    else
        ((status == 124 || status == 137)) && echo "$layer: timed out after ${limit}s"
        state[$layer]=FAILED
        failed=$((failed + 1))
    fi
    seconds[$layer]=$((SECONDS - start))
done
echo
echo "=== summary"
for layer in "$@"; do
    printf '  %-16s %-7s %4ss\n' "$layer" "${state[$layer]}" "${seconds[$layer]}"
    if [[ -s $notes/$layer ]]; then
        sed 's/^/      /' "$notes/$layer"
    fi
done
# A plain closing line that CI log readers understand (it counts layers, not tests).
echo "layers: $passed passed, $failed failed, $skipped skipped"
((failed == 0))

#!/usr/bin/env bash
# The xen layer: real Xen 4.17 under QEMU (tests/xenvm), image build included,
# within XENVM_TIMEOUT seconds (the Makefile runs this under `timeout` with that
# limit; the harness paces its waits against the same deadline, XENVM_DEADLINE,
# so that a slow machine ends the layer with a loud skip and its times rather
# than a kill).
#
# No QEMU of this layer outlives it: the harness kills its own on exit and on
# SIGTERM/SIGINT/SIGHUP (the signals timeout and a terminal send) and ties
# each to its owner with PR_SET_PDEATHSIG (SIGKILL); here, QEMUs recorded
# by owners that died meanwhile are reaped before and after the run (another
# run's live VM is left alone). The layer's times (image, boot, each test)
# are printed at the end and, under run-layers.sh, in the summary
# (XEN_PCI_LAYER_NOTES).
set -uo pipefail
cd "$XEN_PCI_ROOT" || exit 1
budget=${XENVM_TIMEOUT:-1500}
started=$(date +%s)
export XENVM_DEADLINE=$((started + budget))
artifacts=${XENVM_ARTIFACTS:?XENVM_ARTIFACTS names the run artifacts directory}
mkdir -p "$artifacts"
export XENVM_TIMES=$artifacts/times.txt
harness=tests/xenvm/xenvm.py
image_note=

finish() {
    local status=$?
    python3 "$harness" reap | grep -v '^xenvm: reaped 0 ' || true
    {
        echo "budget ${budget}s (XENVM_TIMEOUT), used $(($(date +%s) - started))s; load at start: $load"
        [[ -n $image_note ]] && echo "$image_note"
        [[ -s $XENVM_TIMES ]] && cat "$XENVM_TIMES"
    } >"$artifacts/summary.txt"
    echo
    echo "xen layer times:"
    sed 's/^/  /' "$artifacts/summary.txt"
    # run-layers.sh's summary: all but the per-test lines
    if [[ -n ${XEN_PCI_LAYER_NOTES:-} ]]; then
        grep -v '^    ' "$artifacts/summary.txt" >"$XEN_PCI_LAYER_NOTES" || true
    fi
    exit "$status"
}
load=$(cut -d' ' -f1-3 /proc/loadavg)
trap finish EXIT

python3 "$harness" reap | grep -v '^xenvm: reaped 0 ' || true

# The image first, bounded on its own (it is reused while its recipe is
# unchanged). A failed build is the tests' loud skip, with its reason, not a
# second build attempt inside pytest.
image_limit=$((budget / 2 < 900 ? budget / 2 : 900))
image_started=$(date +%s)
if image_out=$(timeout --kill-after=20 "$image_limit" python3 tests/xenvm/build_image.py \
        2> >(tee "$artifacts/image-build.log" >&2)); then
    how=cached
    grep -q 'build-image: image ready in' "$artifacts/image-build.log" && how=built
    image_note="image: $(basename "$image_out") $how, $(($(date +%s) - image_started))s"
else
    status=$?
    reason=$(tail -n 3 "$artifacts/image-build.log" | tr '\n' ' ')
    ((status == 124)) && reason="not built within ${image_limit}s: $reason"
    image_note="image: UNAVAILABLE after $(($(date +%s) - image_started))s: $reason"
    export XENVM_BUILD=0 XENVM_IMAGE_ERROR=$reason
fi
echo "xen: $image_note"

tools/make/pytest-layer.sh xen tests/xenvm "$@"

#!/usr/bin/env bash
# pytest-layer.sh NAME DIR [PYTEST-ARGS...]: runs pytest over DIR (relative to
# the work tree) with the controller venv. pytest's exit 5 (no test collected)
# is a failure here: DIR has test files (layer-lib.sh checks), so collecting
# none means the setup is broken.
set -euo pipefail
# shellcheck source=tools/make/layer-lib.sh
source "$XEN_PCI_ROOT/tools/make/layer-lib.sh"
name=$1 dir=$2
shift 2
require_tests "$name" "$XEN_PCI_ROOT/$dir" || exit 0
cd "$XEN_PCI_ROOT"
# No cache dir in the tree (-p no:cacheprovider); hypothesis keeps its example
# database outside the tree too (HYPOTHESIS_STORAGE_DIRECTORY).
export HYPOTHESIS_STORAGE_DIRECTORY=$XEN_PCI_CACHE/hypothesis
status=0
python -m pytest -p no:cacheprovider -q "$dir" "$@" || status=$?
if ((status == 5)); then
    echo "$name: pytest collected no test from $dir although it has test files: broken setup" >&2
fi
exit "$status"

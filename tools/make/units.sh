#!/usr/bin/env bash
# ansible-test units over tests/unit on the controller venv's Python 3.12
# (--local: --venv would download a pip bootstrap from the internet), in a
# synced copy of the tree (tools/make/tree.sh says why).
set -euo pipefail
# shellcheck source=tools/make/layer-lib.sh
source "$XEN_PCI_ROOT/tools/make/layer-lib.sh"
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"
require_tests units "$XEN_PCI_ROOT/tests/unit" || exit 0
collection=$(copy_tree)
echo "units: running in $collection (a copy of $XEN_PCI_ROOT)"
report=$collection/tests/output/generated-inputs.jsonl
rm -f "$report"
status=0
ANSIBLE_TEST_CONTENT_ROOT=$collection "$XEN_PCI_ROOT/tools/make/ansible-test.sh" units --local --python 3.12 --color no "$@" || status=$?
# The generated-input test's totals (test_validate_generated.py), summed over its tests.
if [[ -f $report ]]; then
    python3 - "$report" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
total = {k: sum(r[k] for r in rows) for k in ("tried", "rejected", "writes")}
print("units: generated malformed inputs: %(tried)d tried, %(rejected)d rejected cleanly, "
      "%(writes)d xenstore writes before a rejection" % total)
PY
fi
exit "$status"

# shellcheck shell=bash
# Helpers shared by the test layer scripts of tools/make.
#
# Empty layers: a layer whose directory holds no test file yet (integration
# targets and molecule scenarios arrive with later issues) is reported as
# SKIPPED and does not fail `make test`. A layer that has test files but runs
# no test is broken (a collection error, a bad path, a conftest that skips
# everything): pytest then exits 5 and the layer fails. Both cases are told
# apart here by looking for the files, never by accepting exit code 5.

# require_tests NAME DIR [FIND-ARGS...]: returns 1 (after saying SKIPPED) when
# DIR has no file matching FIND-ARGS (default: pytest's test_*.py / *_test.py).
require_tests() {
    local name=$1 dir=$2
    shift 2
    if (($# == 0)); then
        set -- '(' -name 'test_*.py' -o -name '*_test.py' ')'
    fi
    if [[ -d $dir ]] && [[ -n $(find "$dir" -type f "$@" -print -quit) ]]; then
        return 0
    fi
    echo "$name: SKIPPED, no tests in ${dir#"$XEN_PCI_ROOT"/} yet"
    return 1
}

#!/usr/bin/env bash
# The matrix layer (make matrix): the collection under the ansible-core
# releases meta/runtime.yml claims besides the controller venv's (2.21, which
# the other layers test), and its modules under other managed-host Pythons.
#
# Per older release R (requirements/matrix/core-R.txt, locked in core-R.lock):
# a venv of its own, $XEN_PCI_CACHE/venv-coreR-py3.12-<hash of its
# requirements>, made by tools/make/venv.sh once and reused; in it the unit
# tests (tools/make/units.sh) and the integration targets
# (tools/make/integration.sh) with the modules on each host Python of
# MATRIX_HOSTS (default 3.9, the oldest claimed host); sanity
# (tools/make/sanity.sh) under the oldest release, on the controller's Python. The controller venv's
# release runs the integration targets under the host Pythons of
# MATRIX_HOSTS_MAIN (default none: `make integration` runs them on 3.11).
# The oldest release must be requires_ansible's floor.
#
# A host Python is a venv of pyenv's real interpreter with requirements/host.txt
# (tools/make/host-python.sh). The controller Python is PYTHON_BASE (3.12,
# which every claimed release supports as a controller).
#
# Jobs run MATRIX_JOBS at a time (default 2, the CI machine's cores), each in
# its own copy of the tree (XEN_PCI_COPY_TREE) with its log in
# $XEN_PCI_CACHE/matrix-logs/<work tree id>/<job>.log (its end is printed
# when it fails). The table at the end: release x controller Python x host
# Python, layer, result, seconds.
#
#   make matrix MATRIX_HOSTS="3.9 3.11 3.13" MATRIX_HOSTS_MAIN="3.9 3.13"   # every host Python
set -uo pipefail
root=$XEN_PCI_ROOT
cache=$XEN_PCI_CACHE
cd "$root" || exit 1
jobs=${MATRIX_JOBS:-2}
hosts=${MATRIX_HOSTS:-3.9}
hosts_main=${MATRIX_HOSTS_MAIN:-}
python_base=${PYTHON_BASE:?set by the Makefile}
main_release=$("$XEN_PCI_VENV/bin/python" -c 'from ansible.release import __version__ as v; print(".".join(v.split(".")[:2]))')
controller=$("$python_base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

fail() { echo "matrix: $*" >&2; exit 1; }

# Every claimed release has a requirements file: the oldest is the floor of
# meta/runtime.yml's requires_ansible.
releases=${MATRIX_RELEASES:-$(printf '%s\n' requirements/matrix/core-*.txt | sed 's#.*/core-\(.*\)\.txt#\1#' | sort -V)}
floor=$(sed -n "s/^requires_ansible: *'>=\([0-9]*\.[0-9]*\).*/\1/p" meta/runtime.yml)
[[ -n $floor ]] || fail "no requires_ansible: '>=X.Y...' in meta/runtime.yml"
oldest=$(printf '%s\n' requirements/matrix/core-*.txt | sed 's#.*/core-\(.*\)\.txt#\1#' | sort -V | head -n1)
[[ $oldest == "$floor" ]] || fail "meta/runtime.yml claims >=$floor but the oldest matrix release is $oldest (requirements/matrix/core-$floor.txt)"

# The matrix venvs' test tools carry the controller venv's pins.
while read -r pin; do
    grep -qixF "$pin" requirements/controller.txt \
        || fail "requirements/matrix/tests.txt pins $pin, requirements/controller.txt does not: keep them the same"
done < <(grep -v '^\s*\(#\|$\)' requirements/matrix/tests.txt)

req_hash() { cat "$@" | sha256sum | cut -c1-16; }

# ensure_venv DIR_PREFIX PYTHON DIRECT LOCKED [MORE_FILES...]: prints the venv's
# path, after making it when its stamp is missing (venv.sh locks it).
ensure_venv() {
    local prefix=$1 python=$2 direct=$3 locked=$4
    shift 4
    local hash venv
    hash=$(req_hash "$direct" "$locked" "$@")
    venv=$cache/$prefix-$hash
    if [[ ! -f $venv/.xen-pci-requirements-$hash ]]; then
        XEN_PCI_VENV=$venv PYTHON_BASE=$python "$root/tools/make/venv.sh" \
            "$venv/.xen-pci-requirements-$hash" "$direct" "$locked" >&2 || return 1
    fi
    echo "$venv"
}

# The host venvs, made before the jobs start (they would wait for each other).
read -ra host_list <<<"$hosts"
read -ra host_list_main <<<"$hosts_main"
for h in $(printf '%s\n' "${host_list[@]}" "${host_list_main[@]}" | sort -uV); do
    "$root/tools/make/host-python.sh" "$h" >/dev/null || fail "no host venv of Python $h"
done

declare -A venv_of
venv_of[$main_release]=$XEN_PCI_VENV
for r in $releases; do
    [[ $r == "$main_release" ]] && continue
    [[ -f requirements/matrix/core-$r.txt ]] || fail "no requirements/matrix/core-$r.txt"
    venv=$(ensure_venv "venv-core$r-py$controller" "$python_base" requirements/matrix/core-"$r".txt \
        requirements/matrix/core-"$r".lock requirements/matrix/tests.txt) || fail "venv of ansible-core $r"
    venv_of[$r]=$venv
    # ansible-test's offline pip bootstrap for the pip this release pins.
    XEN_PCI_VENV=$venv "$root/tools/make/pybin.sh" || fail "pybin for ansible-core $r"
done

# The jobs: "release host layer" (host - for units and sanity), longest first.
job_list=()
for r in $releases; do
    [[ $r == "$main_release" ]] && continue
    for h in "${host_list[@]}"; do job_list+=("$r $h integration"); done
done
for h in "${host_list_main[@]}"; do job_list+=("$main_release $h integration"); done
if [[ " $releases " == *" $oldest "* && $oldest != "$main_release" ]]; then
    job_list+=("$oldest - sanity")
fi
for r in $releases; do
    [[ $r == "$main_release" ]] && continue
    job_list+=("$r - units")
done

logs=$cache/matrix-logs/$(printf %s "$root" | sha256sum | cut -c1-12)
rm -rf "$logs"
mkdir -p "$logs"

# run_job RELEASE HOST LAYER: one layer script in the release's venv, in a
# collection tree of its own; writes its status and seconds beside its log.
run_job() {
    local r=$1 h=$2 layer=$3 id="$1-$2-$3" start=$SECONDS status=0
    local venv=${venv_of[$r]}
    (
        export XEN_PCI_VENV=$venv PATH=$venv/bin:$PATH XEN_PCI_COPY_TREE=1
        export XEN_PCI_COLLECTION_TREE=$XEN_PCI_COLLECTION_TREE/matrix/$id
        if [[ $h != - ]]; then
            export XEN_PCI_HOST_PYTHON=$h
        fi
        # Sanity of the oldest release on the controller's Python only: the
        # main sanity layer already runs every test on every Python found.
        if [[ $layer == sanity ]]; then
            exec "$root/tools/make/$layer.sh" --python "$controller"
        fi
        exec "$root/tools/make/$layer.sh"
    ) >"$logs/$id.log" 2>&1 </dev/null || status=$?
    echo "$status $((SECONDS - start))" >"$logs/$id.result"
}

echo "matrix: ansible-core ${releases//$'\n'/ } (controller Python $controller), ${#job_list[@]} jobs, $jobs at a time; logs in $logs"
total_start=$SECONDS
running=0
for job in "${job_list[@]}"; do
    if ((running >= jobs)); then
        wait -n
        running=$((running - 1))
    fi
    read -r r h layer <<<"$job"
    echo "matrix: start ansible-core $r ${layer}${h:+ (host Python $h)}" | sed 's/ (host Python -)//'
    run_job "$r" "$h" "$layer" &
    running=$((running + 1))
done
wait

failed=0
echo
echo "=== matrix: ansible-core x controller Python x host Python"
printf '  %-13s %-11s %-6s %-12s %-7s %5s\n' ansible-core controller host layer result seconds
for job in "${job_list[@]}"; do
    read -r r h layer <<<"$job"
    id="$r-$h-$layer"
    read -r status secs <"$logs/$id.result" 2>/dev/null || { status=missing secs=0; }
    version=$("${venv_of[$r]}/bin/python" -c 'from ansible.release import __version__ as v; print(v)')
    if [[ $status == 0 ]]; then
        result=passed
    else
        result=FAILED
        failed=$((failed + 1))
    fi
    printf '  %-13s %-11s %-6s %-12s %-7s %5s\n' "$version" "$controller" "${h/-/n\/a}" "$layer" "$result" "$secs"
done
echo "matrix: $((${#job_list[@]} - failed)) of ${#job_list[@]} jobs passed in $((SECONDS - total_start)) s"
for job in "${job_list[@]}"; do
    read -r r h layer <<<"$job"
    id="$r-$h-$layer"
    read -r status _ <"$logs/$id.result" 2>/dev/null || status=missing
    if [[ $status != 0 ]]; then
        echo
        echo "=== matrix: $id FAILED (exit $status), the end of $logs/$id.log:"
        tail -n 60 "$logs/$id.log"
    fi
done
((failed == 0))

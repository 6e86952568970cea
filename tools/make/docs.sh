#!/usr/bin/env bash
# docs.sh: the documentation site (make docs, the docs test layer).
#  1. lints the collection's docs with antsibull-docs (plugin and role docs,
#     docs/docsite/extra-docs.yml and links.yml, the guides in
#     docs/docsite/rst/ and every collection reference in them);
#  2. writes the site's RST with antsibull-docs (every module, filter and
#     the role, plus the guides) and builds it with Sphinx, offline, every
#     warning an error;
#  3. checks the built HTML and screenshots of it taken with headless
#     Chromium (tools/make/docs/check_site.py);
#  4. follows the getting-started guide on a simulated host: its files, its
#     playbooks and the results it shows (tools/make/docs/run_guide.py).
# Everything lands in $XEN_PCI_DOCS_DIR (default build/docs, git-ignored):
# rst/, html/ (open html/index.html) and screenshots/.
set -euo pipefail
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"
out=${XEN_PCI_DOCS_DIR:-$XEN_PCI_ROOT/build/docs}
conf=$XEN_PCI_ROOT/tools/make/docs

# antsibull-docs finds xen.pci through ansible-doc: in a tree ending in
# ansible_collections/xen/pci, and nothing of the user's configuration.
collection=$(link_tree)
export ANSIBLE_COLLECTIONS_PATH=$XEN_PCI_COLLECTION_TREE/link
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '[defaults]\n' >"$scratch/ansible.cfg"
export ANSIBLE_CONFIG=$scratch/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_LOCAL_TEMP=$scratch/tmp

echo "docs: lint (antsibull-docs lint-collection-docs)"
antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs \
    --validate-collection-refs all --disallow-unknown-collection-refs "$collection"

echo "docs: RST of the collection (antsibull-docs collection) in ${out#"$XEN_PCI_ROOT"/}/rst"
mkdir -p "$out"
rm -rf "$out/rst" "$out/html" "$out/screenshots"
mkdir -p "$out/rst"
chmod og-w "$out/rst"
antsibull-docs --config-file "$conf/antsibull-docs.cfg" collection --use-current --squash-hierarchy \
    --fail-on-error --cleanup everything --dest-dir "$out/rst" xen.pci

echo "docs: HTML (sphinx-build) in ${out#"$XEN_PCI_ROOT"/}/html"
sphinx-build -b html -q -W --keep-going -c "$conf" -d "$scratch/doctrees" "$out/rst" "$out/html"

echo "docs: checks of the built pages and their screenshots"
python "$conf/check_site.py" --site "$out/html" --screenshots "$out/screenshots"
echo "docs: the getting-started guide, run against a simulated host"
python "$conf/run_guide.py"
echo "docs: site at ${out#"$XEN_PCI_ROOT"/}/html/index.html"

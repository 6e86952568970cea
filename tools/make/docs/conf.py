# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sphinx configuration of the xen.pci documentation site (tools/make/docs.sh).

The RST it builds is written by ``antsibull-docs collection`` from the
plugins' own documentation and docs/docsite/ (extra-docs.yml, rst/*.rst).
The build is offline and strict: no intersphinx inventory is fetched, every
warning is an error (``-W``) and every unresolved reference is a warning
(``nitpicky``). The few labels of Ansible's own documentation that
antsibull-docs' generated pages refer to are resolved by a table here
instead of an inventory.
"""

from __future__ import annotations

from docutils import nodes

project = "xen.pci"
copyright = "2026, xen.pci contributors"  # pylint: disable=redefined-builtin
author = "xen.pci contributors"

html_title = "xen.pci: Xen PCI passthrough for Ansible"
html_short_title = "xen.pci documentation"

# sphinx_antsibull_ext: the directives and roles of antsibull-docs' pages.
# No sphinx.ext.intersphinx: nothing is fetched at build time.
extensions = ["sphinx_antsibull_ext"]

pygments_style = "ansible"
highlight_language = "YAML+Jinja"

html_theme = "sphinx_ansible_theme"
html_theme_options = {
    # No bar of links to other sites, no ads, no marketing navigation.
    "topbar_links": {},
    "show_extranav": False,
    "show_rtd_ethical_ads": False,
    "collapse_navigation": False,
}
html_show_sphinx = False
html_copy_source = False
html_use_index = False
html_domain_indices = False

default_role = "any"
nitpicky = True

# Labels of the Ansible documentation that antsibull-docs' generated pages
# use (``:ref:`here <common_return_values>```), with the page each names.
ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/latest/"
EXTERNAL_LABELS = {
    "common_return_values": ANSIBLE_DOCS + "reference_appendices/common_return_values.html",
    "ansible_configuration_settings": ANSIBLE_DOCS + "reference_appendices/config.html",
}


def _external_label(app, env, node, contnode):  # pylint: disable=unused-argument
    """Resolve a known Ansible documentation label to its page; any other
    missing reference stays missing (and fails the build)."""
    if node.get("refdomain") != "std" or node.get("reftype") != "ref":
        return None
    url = EXTERNAL_LABELS.get(node.get("reftarget"))
    if url is None:
        return None
    text = contnode.astext() if contnode is not None else node.get("reftarget")
    if not node.get("refexplicit"):
        text = node.get("reftarget").replace("_", " ")
    ref = nodes.reference("", "", internal=False, refuri=url)
    ref += nodes.inline(text, text)
    return ref


def _home_link(app, pagename, templatename, context, doctree):  # pylint: disable=unused-argument
    """The theme's logo links to ``documentation_home_url`` as written; make
    it the site's index relative to each page, so it works from file://."""
    context["theme_documentation_home_url"] = context["pathto"](app.config.root_doc)


def setup(app):
    app.connect("missing-reference", _external_label)
    app.connect("html-page-context", _home_link)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks of the built documentation site (tools/make/docs.sh).

What the collection holds decides what the site must show, so a module,
option, return value, filter, guide or error class added without its docs
fails here:

* every module, filter and the role has its page, listed on the index, with
  the sections antsibull-docs writes (synopsis, parameters, examples, return
  values), every documented option and return value, and every example task;
* every guide of docs/docsite/extra-docs.yml has its page, linked from the
  index, with at least one code example; the troubleshooting guide has a
  section for every error class of the core (plugins/module_utils);
* no page carries a docutils error, no page loads anything from the
  network (the site works offline), and every link inside the site leads
  to a page and an anchor that exist (links.yml's too);
* headless Chromium renders the index, a module page and a guide: each
  screenshot has the window's size, the theme's dark navigation column and
  a light main column with text in it.

Before that, the screenshot check is run on two pages that must fail it (a
blank page, and a module page without its style sheets), so that a check
which can no longer fail is noticed.
"""

from __future__ import annotations

import argparse
import ast
import glob
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
from PIL import Image, ImageStat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
WINDOW = (1280, 2000)
# The theme's navigation column (dark) and the main column (light), in
# pixels of the 1280-wide window.
NAV_BOX = (10, 300, 280, 1900)
MAIN_BOX = (340, 150, 1240, 1900)
SCREENSHOTS = (
    ("index", "index.html"),
    ("module-passthrough", "passthrough_module.html"),
    ("guide-getting-started", "docsite/getting_started.html"),
)
TROUBLESHOOTING = "docsite/troubleshooting.html"

failures = []


def fail(msg):
    failures.append(msg)
    print("docs check FAILED: %s" % msg)


class Page(html.parser.HTMLParser):
    """What the checks need of one HTML page."""

    def __init__(self, path):
        super().__init__(convert_charrefs=True)
        self.path = path
        self.ids = set()
        self.links = set()
        self.hrefs = []
        self.headings = []
        self.classes = []
        self.remote = []
        self.text = []
        self._heading = None
        self._skip = 0
        with open(path, encoding="utf-8") as handle:
            self.feed(handle.read())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if attrs.get("class"):
            self.classes.extend(attrs["class"].split())
        if tag == "a" and attrs.get("href"):
            self.links.add(attrs["href"].split("#")[0])
            self.hrefs.append(attrs["href"])
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            loads = tag in ("script", "img", "iframe") or (tag == "link" and attrs.get("rel") != "canonical")
            if loads and key in attrs and re.match(r"^(https?:)?//", value):
                self.remote.append("<%s %s=%s>" % (tag, key, value))
        if tag in ("h1", "h2", "h3"):
            self._heading = [tag, ""]
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if self._heading is not None and tag == self._heading[0]:
            self.headings.append((tag, self._heading[1].strip().rstrip("\uf0c1").strip()))
            self._heading = None
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if self._heading is not None:
            self._heading[1] += data
        if not self._skip:
            self.text.append(data)

    def body(self):
        return re.sub(r"\s+", " ", " ".join(self.text))

    def has_section(self, title):
        return any(text == title for _tag, text in self.headings)


def load_page(site, rel):
    path = os.path.join(site, rel)
    if not os.path.isfile(path):
        fail("%s is missing" % rel)
        return None
    return Page(path)


def plugin_docs(path):
    """DOCUMENTATION, EXAMPLES and RETURN of a module (Python) or filter (YAML)."""
    if path.endswith(".py"):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        raw = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        raw[target.id] = node.value.value
        docs = yaml.safe_load(raw.get("DOCUMENTATION", "")) or {}
        return docs, raw.get("EXAMPLES", ""), yaml.safe_load(raw.get("RETURN", "")) or {}
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    return data.get("DOCUMENTATION") or {}, data.get("EXAMPLES") or "", data.get("RETURN") or {}


def fragment_options(name):
    """The options a doc fragment of this collection adds (xen.pci.host)."""
    if not name.startswith("xen.pci."):
        return {}
    parts = name.split(".")
    path = os.path.join(ROOT, "plugins", "doc_fragments", parts[2] + ".py")
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    attr = parts[3] if len(parts) > 3 else "DOCUMENTATION"
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets):
            return (yaml.safe_load(node.value.value) or {}).get("options") or {}
    return {}


def example_names(examples):
    return [task["name"] for task in (yaml.safe_load(examples) or []) if isinstance(task, dict) and task.get("name")]


def check_plugin_page(site, rel, kind, docs, examples, returns):
    page = load_page(site, rel)
    if page is None:
        return
    sections = {
        "module": ("Synopsis", "Parameters", "Examples", "Return Values"),
        "filter": ("Synopsis", "Input", "Examples", "Return Value"),
    }[kind]
    for title in sections:
        if not page.has_section(title):
            fail("%s has no %s section (headings: %s)" % (rel, title, [t for _h, t in page.headings]))
    if docs.get("requirements") or any(f.startswith("xen.pci.host") for f in docs.get("extends_documentation_fragment", [])):
        if not page.has_section("Requirements"):
            fail("%s has no Requirements section" % rel)
    options = dict(docs.get("options") or {})
    for fragment in docs.get("extends_documentation_fragment") or []:
        options.update(fragment_options(fragment))
    for name in options:
        if "parameter-%s" % name not in page.ids:
            fail("%s does not document the option %s" % (rel, name))
    for name in returns:
        if "return-%s" % name not in page.ids:
            fail("%s does not document the return value %s" % (rel, name))
    if not any(c.startswith("highlight-yaml") for c in page.classes):
        fail("%s has no highlighted YAML example" % rel)
    body = page.body()
    for name in example_names(examples):
        if name not in body:
            fail("%s lacks the example %r" % (rel, name))
    return page


def check_role_page(site):
    rel = "passthrough_role.html"
    page = load_page(site, rel)
    if page is None:
        return
    with open(os.path.join(ROOT, "roles", "passthrough", "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        specs = yaml.safe_load(handle)["argument_specs"]
    for entry, spec in specs.items():
        for name in spec.get("options") or {}:
            if "parameter-%s--%s" % (entry, name) not in page.ids:
                fail("%s does not document %s of the entry point %s" % (rel, name, entry))
    for title in ("Synopsis", "Parameters"):
        if not page.has_section(title):
            fail("%s has no %s section" % (rel, title))


def error_classes():
    """XenPciError and every class of plugins/module_utils derived from it:
    the values a failed result's ``error`` can take."""
    bases = {}
    for path in glob.glob(os.path.join(ROOT, "plugins", "module_utils", "_*.py")):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
    found = {"XenPciError"}
    grown = True
    while grown:
        more = {name for name, parents in bases.items() if found.intersection(parents)} - found
        found |= more
        grown = bool(more)
    return sorted(found)


def check_guides(site, index):
    with open(os.path.join(ROOT, "docs", "docsite", "extra-docs.yml"), encoding="utf-8") as handle:
        sections = yaml.safe_load(handle)["sections"]
    refs = [entry if isinstance(entry, str) else entry["ref"] for section in sections for entry in section["toctree"]]
    on_disk = sorted(os.path.splitext(os.path.basename(p))[0]
                     for p in glob.glob(os.path.join(ROOT, "docs", "docsite", "rst", "*.rst")))
    if sorted(refs) != on_disk:
        fail("extra-docs.yml lists %s, docs/docsite/rst has %s" % (sorted(refs), on_disk))
    for ref in refs:
        rel = "docsite/%s.html" % ref
        page = load_page(site, rel)
        if page is None:
            continue
        if rel not in index.links:
            fail("the index does not link to the guide %s" % rel)
        if not any(c.startswith("highlight-") for c in page.classes):
            fail("the guide %s has no code example" % rel)
        if not [h for h in page.headings if h[0] == "h1"]:
            fail("the guide %s has no title" % rel)
    page = load_page(site, TROUBLESHOOTING)
    if page is not None:
        titles = [text for _tag, text in page.headings]
        for name in error_classes():
            if not any(re.match(r"^%s\b" % re.escape(name), t) for t in titles):
                fail("%s has no section for the error class %s" % (TROUBLESHOOTING, name))


def check_all_pages(site):
    """No docutils error, nothing loaded from the network, and every link
    inside the site leads to a page (and an anchor) that exists."""
    pages = {}
    for path in glob.glob(os.path.join(site, "**", "*.html"), recursive=True):
        pages[os.path.normpath(path)] = Page(path)
    for path, page in sorted(pages.items()):
        rel = os.path.relpath(path, site)
        if "system-message" in page.classes:
            fail("%s carries a docutils error (system-message)" % rel)
        if page.remote:
            fail("%s loads from the network: %s" % (rel, ", ".join(page.remote[:3])))
        for href in page.hrefs:
            if re.match(r"^[a-z][a-z0-9+.-]*:", href, re.I):
                continue        # another site, mailto:
            if href.startswith("/"):
                fail("%s links to %s, a path from the root, which a site opened from its files does not have" % (rel, href))
                continue
            target, _sep, anchor = href.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            if not os.path.exists(target):
                fail("%s links to %s, which does not exist" % (rel, href))
            elif anchor and target in pages and anchor not in pages[target].ids:
                fail("%s links to %s, which has no anchor %s" % (rel, os.path.relpath(target, site), anchor))


def check_content(site):
    index = load_page(site, "index.html")
    if index is None:
        return
    for path in sorted(glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        rel = "%s_module.html" % name
        docs, examples, returns = plugin_docs(path)
        check_plugin_page(site, rel, "module", docs, examples, returns)
        if rel not in index.links:
            fail("the index does not link to %s" % rel)
    for path in sorted(glob.glob(os.path.join(ROOT, "plugins", "filter", "*.yml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        rel = "%s_filter.html" % name
        docs, examples, returns = plugin_docs(path)
        check_plugin_page(site, rel, "filter", docs, examples, returns)
        if rel not in index.links:
            fail("the index does not link to %s" % rel)
    check_role_page(site)
    if "passthrough_role.html" not in index.links:
        fail("the index does not link to passthrough_role.html")
    check_guides(site, index)
    check_all_pages(site)


# -- rendering -----------------------------------------------------------------


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(browser, url, png, profile):
    """Headless Chromium's screenshot of ``url``; returns an error or None."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           "--user-data-dir=%s" % profile, "--window-size=%d,%d" % WINDOW, "--screenshot=%s" % png, url]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        return "chromium did not finish within 90 s"
    if proc.returncode != 0 or not os.path.isfile(png):
        tail = proc.stdout.decode("utf-8", "replace").strip().splitlines()[-5:]
        return "chromium exited %d without a screenshot: %s" % (proc.returncode, " | ".join(tail))
    return None


def luminance(image, box):
    region = image.crop(box).convert("L")
    stat = ImageStat.Stat(region)
    histogram = region.histogram()
    total = sum(histogram)
    ink = sum(histogram[:128]) / float(total)
    return stat.mean[0], ink


def judge(png):
    """The problems of a screenshot of a themed page with text (a list)."""
    problems = []
    with Image.open(png) as image:
        image.load()
        if image.size != WINDOW:
            return ["size %dx%d, not %dx%d" % (image.size + WINDOW)]
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        if colours is not None and len(colours) < 16:
            problems.append("only %d colours: nothing rendered" % len(colours))
        nav_mean = luminance(image, NAV_BOX)[0]
        main_mean, main_ink = luminance(image, MAIN_BOX)
    if nav_mean > 110:
        problems.append("no dark navigation column (mean luminance %.0f): the theme's style sheets did not apply" % nav_mean)
    if main_mean < 170:
        problems.append("the main column is not light (mean luminance %.0f)" % main_mean)
    if not 0.003 <= main_ink <= 0.35:
        problems.append("the main column has %.1f%% dark pixels: %s" % (
            100 * main_ink, "no text" if main_ink < 0.003 else "not a page of text"))
    return problems


def self_test(browser, site, work):
    """The screenshot check must reject a blank page and an unstyled one."""
    blank = os.path.join(work, "blank.html")
    with open(blank, "w", encoding="utf-8") as handle:
        handle.write("<!DOCTYPE html><html><head><title>blank</title></head><body></body></html>\n")
    unstyled = os.path.join(site, "_unstyled_check.html")
    with open(os.path.join(site, "passthrough_module.html"), encoding="utf-8") as handle:
        text = re.sub(r"<link[^>]*stylesheet[^>]*>", "", handle.read())
    with open(unstyled, "w", encoding="utf-8") as handle:
        handle.write(text)
    try:
        for label, path in (("a blank page", blank), ("a module page without style sheets", unstyled)):
            png = os.path.join(work, "negative.png")
            error = screenshot(browser, "file://" + path, png, os.path.join(work, "profile-negative"))
            if error:
                fail("self-test on %s: %s" % (label, error))
            elif not judge(png):
                fail("self-test: the screenshot check accepts %s" % label)
            else:
                print("docs: the screenshot check rejects %s, as it must" % label)
    finally:
        os.unlink(unstyled)


def check_rendering(site, out):
    browser = chromium()
    if browser is None:
        fail("no chromium on PATH (make docs installs Debian's chromium)")
        return
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="xen-pci-docs-")
    try:
        self_test(browser, site, work)
        for label, rel in SCREENSHOTS:
            png = os.path.join(out, label + ".png")
            # A fresh profile per page: nothing carries over between them.
            error = screenshot(browser, "file://" + os.path.join(os.path.abspath(site), rel), png,
                               os.path.join(work, "profile-" + label))
            if error:
                fail("screenshot of %s: %s" % (rel, error))
                continue
            problems = judge(png)
            for problem in problems:
                fail("screenshot of %s (%s): %s" % (rel, png, problem))
            if not problems:
                print("docs: %s renders (%s, %d bytes)" % (rel, os.path.relpath(png, ROOT), os.path.getsize(png)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", required=True, help="the built HTML (sphinx-build's output)")
    parser.add_argument("--screenshots", required=True, help="where the screenshots go")
    args = parser.parse_args(argv)
    check_content(args.site)
    check_rendering(args.site, args.screenshots)
    if failures:
        print("docs: %d check(s) failed" % len(failures))
        return 1
    print("docs: every page and screenshot checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sphinx configuration: the prose docs (Markdown, MyST) and the API reference (autodoc, Google-style docstrings).

Build (warnings are errors, broken cross-references are warnings)::

    python3 -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.ext.autosummary import Autosummary
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.nodes import make_refnode

import tscnet

project = "tscnet"
author = "the tscnet authors"
copyright = "the tscnet authors, Apache-2.0"
release = version = tscnet.__version__

extensions = [
    "myst_parser",           # docs/*.md
    "sphinx.ext.autodoc",    # the API reference, from the docstrings
    "sphinx.ext.napoleon",   # their Google-style Args:/Returns:/Raises:/Attributes: sections
    "sphinx.ext.autosummary",  # the table of a package's public names (the public-names directive below)
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# -- Warnings: every broken reference fails the build (-W -n) ----------------------------------
nitpicky = True
# No intersphinx: the build runs offline (CI, no network), so neither Python's nor PyTorch's
# inventory can be fetched, and a failed fetch would itself be a warning. References to names
# outside tscnet (in signatures, base classes and docstrings) therefore have no target; they
# render as plain code. Only third-party and standard-library names are ignored here: a broken
# reference to a tscnet name still fails the build.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|nn|timm|torchvision|np|numpy)(\..*)?"),
    (r"py:.*", r"Tensor"),
    # the standard library's (pathlib.Path, argparse.ArgumentParser, ...), in signatures and bases
    (r"py:.*", rf"({'|'.join(sorted(sys.stdlib_module_names))})\..*"),
]

# -- autodoc / napoleon ---------------------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
    # Every public name a module defines, not only its __all__ (data/registry.py's leaves out
    # create_test_loader); names a module imports are documented where they are defined.
    "ignore-module-all": True,
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # `dt_init="depth:0.5"`, not the evaluated default
autoclass_content = "both"  # the class docstring, then __init__'s (where it has one)
autodoc_inherit_docstrings = False  # a bare forward() would show nn.Module.forward's docstring, written for torch's docs
napoleon_google_docstring = True
napoleon_numpy_docstring = False

autosummary_generate = False  # the tables only: every object is documented on its module's page

# -- MyST (the Markdown pages) --------------------------------------------------------------------
myst_heading_anchors = 3  # [text](page.md#a-heading) links, as on GitHub

# -- HTML -------------------------------------------------------------------------------------------
try:
    import furo  # noqa: F401
    html_theme = "furo"
except ImportError:  # the default theme: the docs build without the optional one
    html_theme = "alabaster"
html_title = f"tscnet {release}"


# -- Hooks ----------------------------------------------------------------------------------------
GITHUB = "https://github.com/tscnet/tscnet/blob/main/"  # the repository ([project.urls] in pyproject.toml)
# A link from docs/ to a file outside it, [BENCHMARKS.md](../BENCHMARKS.md): the right relative
# link on GitHub, where these pages are read too, but no document of this site.
_OUTSIDE_LINK = re.compile(r"\]\(\.\./([^)\s]+)\)")


def _outside_links_to_github(app, docname: str, source: list[str]) -> None:
    """Point links to files outside docs/ at their page on GitHub (the .md files stay as they are)."""
    if "/" not in docname and app.env.doc2path(docname).suffix == ".md":
        source[0] = _OUTSIDE_LINK.sub(lambda m: f"]({GITHUB}{m.group(1)})", source[0])


def _parseable_factory_defaults(app, what, name, obj, options, signature, return_annotation):
    """A dataclass field's ``default_factory`` shows as ``<factory>``, which the Python domain
    cannot parse (it then splits the signature at every comma): show ``...`` instead."""
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def _public_bases(app, name, obj, options, bases: list) -> None:
    """A private base class (``_StepNorm``) has no page: show its own bases in its place."""
    i = 0
    while i < len(bases):
        if getattr(bases[i], "__name__", "").startswith("_") and isinstance(bases[i], type):
            bases[i:i + 1] = [b for b in bases[i].__bases__ if b not in bases]
        else:
            i += 1


class PublicNames(Autosummary):
    """``.. public-names:: tscnet.stepping``: the autosummary table of a module's ``__all__``, read
    at build time, so that a name added to ``__all__`` shows up (and fails the build if it has no
    docstring to link to)."""

    required_arguments = 1
    has_content = False

    def run(self):
        module = importlib.import_module(self.arguments[0])
        # Relative to the page's current module (the package's automodule sets it); a constant by
        # the module that assigns it, whose ``#:`` comment is its summary.
        self.content = StringList([_summary_name(module, name) for name in module.__all__])
        self.arguments = []
        result = super().run()
        # References in a summary line resolve in the module that defines the object, as on its page.
        for row, name in zip(result[-1].findall(nodes.row), module.__all__):
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                for ref in row.findall(addnodes.pending_xref):
                    ref["py:module"] = obj.__module__
        return result


def _summary_name(package, name: str) -> str:
    obj = getattr(package, name)
    if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
        return name
    for modname, mod in sorted(sys.modules.items()):
        if (modname.startswith(package.__name__ + ".") and vars(mod).get(name) is obj
                and ("", name) in ModuleAnalyzer.for_module(modname).find_attr_docs()):
            return f"~{modname.removeprefix(package.__name__ + '.')}.{name}"
    return name


_attribute_docs: dict[str, list[str]] = {}


def _keep_attribute_doc(app, what, name, obj, options, lines) -> None:
    """Runs before napoleon: keep a constant's or attribute's docstring as written."""
    if what in ("data", "attribute"):
        _attribute_docs[name] = list(lines)


def _restore_attribute_doc(app, what, name, obj, options, lines) -> None:
    """Runs after napoleon, which reads the first line of an attribute's docstring as Google's
    ``type: description``; ours (``#:`` comments) are plain sentences, colons included."""
    if what in ("data", "attribute") and name in _attribute_docs:
        lines[:] = _attribute_docs.pop(name)


def _import(name: str):
    """The object a dotted name names (``tscnet.stepping.attach_steps``), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # noqa: BLE001, S112 (not a module, or one that fails to import: try the shorter prefix)
            continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


_SCALARS = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset)  # equal values may be one object
_documented: dict[int, list[str]] = {}  # id(object) -> the names it is documented under


def _resolve_reexport(app, env, node, contnode):
    """Resolve a reference to a re-exported name (``tscnet.step_sizes``, ``create_loaders`` in
    ``tscnet.data``'s docstring, ``Task`` in a module that imports it) to the object's own entry.

    Every object is documented once, on the page of the module that defines it; a package's
    ``__all__`` and a module's imports give it more names. The reference is looked up as Python
    would (the target in the referring module, then as a full name) and resolved when that very
    object is documented under another name (a number or string: under the same last name). A
    name that does not exist (renamed, removed) or an object without a docstring still fails the build.
    """
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    if not _documented:  # built on the first miss: every page has been read by then
        for name, entry in domain.objects.items():
            if not entry.aliased and entry.objtype != "module":
                obj = _import(name)
                if obj is not None:
                    _documented.setdefault(id(obj), []).append(name)
    target = node["reftarget"].lstrip(".~")
    module = node.get("py:module")
    for candidate in ([f"{module}.{target}"] if module else []) + [target]:
        obj = _import(candidate)
        if obj is None:
            continue
        names = _documented.get(id(obj), [])
        if isinstance(obj, _SCALARS):
            names = [n for n in names if n.rpartition(".")[2] == candidate.rpartition(".")[2]]
        canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        if canonical in names:
            names = [canonical]
        if len(names) == 1:
            entry = domain.objects[names[0]]
            return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, names[0])
    return None


def setup(app):
    app.add_directive("public-names", PublicNames)
    app.connect("missing-reference", _resolve_reexport)
    app.connect("autodoc-process-docstring", _keep_attribute_doc, priority=400)  # napoleon's: 500
    app.connect("autodoc-process-docstring", _restore_attribute_doc, priority=600)
    app.connect("source-read", _outside_links_to_github)
    app.connect("autodoc-process-signature", _parseable_factory_defaults)
    app.connect("autodoc-process-bases", _public_bases)

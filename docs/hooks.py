"""MkDocs hooks: what the docs build makes instead of keeping in the repository.

- benchmarks/figures/*.png: drawn by docs/make_figures.py from benchmarks/results/*.json;
  a page marks where a figure goes with ``<!-- figure: NAME caption -->``, replaced by the image,
  or by a line saying its results file is missing.
- reference/settings.md: every registered detector's settings, from `detector_settings`.

And one thing it removes: Material's offline plugin adds a script from a CDN (a Worker shim
for search from file:// pages). Nothing is fetched from elsewhere at build or view time: pages
work opened from disk, search where the site is served (`python3 -m http.server -d site`).

Generated files live only in the built site (mkdocs File.generated), never in docs/.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

DOCS = Path(__file__).resolve().parent
FIGURES = "benchmarks/figures"
SETTINGS_PAGE = "reference/settings.md"

_made: list[str] = []


def detector_settings(name: str) -> dict:
    """One detector's settings as `pyanom info NAME --json` prints them (pyanom.registry.describe),
    with the first paragraph of its docstring as a summary: the one source of the settings reference."""
    from pyanom.registry import describe, detector_class

    doc = inspect.getdoc(detector_class(name)) or ""
    return {**describe(name), "summary": doc.split("\n\n")[0].replace("\n", " ")}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def settings_markdown() -> str:
    """The settings reference page: one table per registered detector that imports."""
    from pyanom.registry import list_detectors

    lines = ["# Settings reference", "",
             "Every setting of every registered detector, with its type, default and help, generated when "
             "the docs are built. Set one with `--set KEY=VALUE` on the command line or as a keyword of "
             "`pyanom.create`; `pyanom info DETECTOR` prints the same list.", ""]
    for entry in list_detectors():
        if entry.error:
            continue
        info = detector_settings(entry.name)
        lines += [f"## {info['name']}", "", f"*{info['supervision']}*. {info['summary']}", "",
                  "| setting | type | default | help |", "|---|---|---|---|"]
        for s in info["settings"]:
            limits = (f" Bounds: {s['interval']}." if s.get("interval") else "") + \
                     (f" Choices: {', '.join(map(str, s['choices']))}." if s.get("choices") else "")
            lines.append(f"| `{s['name']}` | {_cell(s['type'])} | `{_cell(json.dumps(s['default']))}` | "
                         f"{_cell(s['help'])}{limits} |")
        lines.append("")
    return "\n".join(lines)


@event_priority(-100)  # after the offline plugin has added it
def on_config(config):
    config.extra["polyfills"] = [p for p in config.extra.get("polyfills", []) if "://" not in p]
    return config


def _figures_module():
    spec = importlib.util.spec_from_file_location("pyanom_docs_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    out = Path(tempfile.mkdtemp(prefix="pyanom-figures-"))
    _made[:] = _figures_module().make_all(out)
    for name in _made:
        files.append(File.generated(config, f"{FIGURES}/{name}.png", abs_src_path=str(out / f"{name}.png")))
    files.append(File.generated(config, SETTINGS_PAGE, content=settings_markdown()))
    return files


_MARKER = re.compile(r"<!-- figure: (\w+) (.*?) -->")


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")

    def figure(match):
        name, caption = match.group(1), match.group(2)
        if name not in _made:
            return f"*No figure yet: `benchmarks/results/{name}.json` is not in this checkout.*"
        return f"![{caption}]({'../' * depth}{FIGURES}/{name}.png)"

    return _MARKER.sub(figure, markdown)

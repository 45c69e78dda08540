"""Sphinx extension: the site for every reader (phones, print, screen readers, the Chinese edition) and the PDF.

* **Alt text for notebook figures.** A notebook output image has no alt text, so Sphinx writes its file path
  (``../_images/<sha256>.png``). ``FigureAltText`` gives every image without one the text of, first found: the
  figure's caption; the ``alt`` that myst-nb reads from the cell's metadata (``"mystnb": {"image": {"alt": ...}}``,
  which needs nothing from here); else "Figure: <the heading of the section it is in>", in the edition's language
  (the heading is translated with the page).
* **Figures open at full size**: ``book/_static/bnref.js`` wraps every figure of a notebook's output in a link to the
  image file (a phone shrinks a 1,200 px figure to the screen's width).
* **Light pages.** pydata-sphinx-theme loads Sphinx's search scripts and the whole search index on every page, for
  a search-as-you-type that this book does not use (``search_as_you_type`` is off), and Font Awesome's 1.5 MB
  JavaScript, which draws the same icons as the web fonts its stylesheet already declares. The template
  ``templates/layout.html`` drops both with the filter ``bnref_drop_scripts``: the search scripts and the index are
  then loaded by the search page only, and icons come from the fonts.
* **The Chinese edition's interface.** Labels of the theme and the extensions that have no Chinese translation of
  their own (or a Traditional one) are translated here (``UI_STRINGS``), and the notebook pages' Binder, Colab and
  download buttons say that they open the English notebook.
* **singlehtml** (the PDF's builder, ``tools/build_pdf.py``): nodes whose writers are registered for ``html`` only
  (myst-nb's hidden cells, whose writers are replaced here by ones that translate their ``aria-label``) get the same
  writers for ``singlehtml``, which Sphinx otherwise reports as unknown.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.transforms.post_transforms import SphinxPostTransform

# English label -> Chinese, for the interface strings that reach the Chinese edition in English (or in Traditional
# Chinese): the theme's templates and buttons, myst-nb's cell toggles, sphinx-togglebutton's hints.
UI_STRINGS: dict[str, dict[str, str]] = {
    "zh_CN": {
        # sphinx-book-theme (header buttons) and pydata-sphinx-theme (templates)
        "Repository": "仓库",
        "Source repository": "源代码仓库",
        "Source repositories": "源代码仓库",
        "Open issue": "提交问题",
        "Download this page": "下载本页",
        "Download source file": "下载源文件",
        "Print to PDF": "打印为 PDF",
        "列印成 PDF": "打印为 PDF",
        "Launch interactive content": "启动交互式内容",
        "Binder logo": "Binder 图标",
        "Colab logo": "Colab 图标",
        "Fullscreen mode": "全屏模式",
        "Color mode": "颜色模式",
        "Light": "浅色",
        "Dark": "深色",
        "System Settings": "跟随系统设置",
        "Toggle primary sidebar": "切换主侧边栏",
        "Toggle secondary sidebar": "切换次侧边栏",
        "Toggle hidden content": "展开或收起隐藏内容",
        "Link to this heading": "指向本标题的链接",
        "Link to this equation": "指向本公式的链接",
        "Link to this code": "指向本代码的链接",
        "Link to this image": "指向本图片的链接",
        "Link to this table": "指向本表格的链接",
        "Link to this definition": "指向本定义的链接",
        "Main": "主导航",
        "Page": "本页",
        "Skip to main content": "跳到主要内容",
        "Back to top": "回到顶部",
        "Contents": "目录",
        "Previous": "上一页",
        "Next": "下一页",
        "previous page": "上一页",
        "next page": "下一页",
        "Section Navigation": "章节导航",
        "Search": "搜索",
        "Search Results": "搜索结果",
        "© Copyright %(copyright)s.": "© 版权所有 %(copyright)s。",
        # myst-nb's hidden cells (nb_code_prompt_show / nb_code_prompt_hide, with their {type})
        "Show code cell source": "显示代码单元格源码",
        "Hide code cell source": "隐藏代码单元格源码",
        "Show code cell outputs": "显示代码单元格输出",
        "Hide code cell outputs": "隐藏代码单元格输出",
        "Show code cell content": "显示代码单元格内容",
        "Hide code cell content": "隐藏代码单元格内容",
        # sphinx-togglebutton
        "Click to show": "点击显示",
        "Click to hide": "点击隐藏",
    }
}
# The notebook pages' launch and download buttons, in an edition whose notebooks are not in its language.
ENGLISH_NOTEBOOK = {"zh_CN": "（英文 notebook）"}
ENGLISH_NOTEBOOK_TOOLTIP = {"zh_CN": "打开的是英文原版 notebook：本书的 notebook 只有英文版"}
FIGURE = {"en": "Figure: {}", "zh_CN": "图：{}"}
# Labels written by other extensions' JavaScript, translated in the page by book/_static/bnref.js.
JS_LABELS = ("Toggle hidden content",)
DROPPED_SCRIPTS = ("searchindex.js", "searchtools.js", "language_data.js", "fontawesome.js")


def language_of(config: Config) -> str:
    return (config.language or "en").replace("-", "_")


def ui(config: Config, text: str) -> str:
    """``text`` in the edition's language, when ``UI_STRINGS`` has it."""
    return UI_STRINGS.get(language_of(config), {}).get(text, text)


def section_title(node: nodes.Node) -> str:
    """The title of the innermost section that holds ``node``."""
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.section) and parent.children and isinstance(parent[0], nodes.title):
            return parent[0].astext().strip()
        parent = parent.parent
    return ""


def image_has_alt(image: nodes.image) -> bool:
    alt = str(image.get("alt", "")).strip()
    return bool(alt) and not re.search(r"\.(png|jpe?g|svg|gif|webp)$", alt, flags=re.IGNORECASE)


class FigureAltText(SphinxPostTransform):
    """Alt text for every image that has none: its figure's caption, else "Figure: <section heading>"."""

    default_priority = 205  # after myst-nb's output rendering and hidden-cell transforms
    formats = ("html",)

    def run(self, **kwargs: Any) -> None:
        language = language_of(self.config)
        template = FIGURE.get(language, FIGURE["en"])
        for image in self.document.findall(nodes.image):
            if image_has_alt(image):
                continue
            figure = image.parent if isinstance(image.parent, nodes.figure) else None
            captions = [c for c in (figure.children if figure else []) if isinstance(c, nodes.caption)]
            if captions:
                image["alt"] = captions[0].astext().strip()
            else:
                heading = section_title(image) or self.env.titles[self.env.docname].astext().strip()
                image["alt"] = template.format(heading)


class TranslateCellToggles(SphinxPostTransform):
    """myst-nb's "Show code cell source" (a prompt written into the page) in the edition's language."""

    default_priority = 210  # after myst-nb's HideInputCells (199)
    formats = ("html",)

    def run(self, **kwargs: Any) -> None:
        if language_of(self.config) == "en":
            return
        for node in self.document.findall(nodes.Element):
            if "prompt_show" in node.attributes:
                node["prompt_show"] = ui(self.config, node["prompt_show"])
                node["prompt_hide"] = ui(self.config, node["prompt_hide"])


def ui_labels(app: Sphinx) -> None:
    """The labels that other extensions' JavaScript writes into the page (sphinx-togglebutton's "Toggle hidden
    content"), in the edition's language for ``book/_static/bnref.js`` to put in: ``BNREF_UI`` in every page."""
    table = UI_STRINGS.get(language_of(app.config))
    if table:
        labels = {english: table[english] for english in JS_LABELS if english in table}
        app.add_js_file(None, body=f"var BNREF_UI = {json.dumps(labels, ensure_ascii=False)};")


def drop_scripts(html: str, *names: str) -> str:
    """``html`` without the ``<script>`` tags (and preloads) whose ``src`` ends in one of ``names``."""
    names = names or DROPPED_SCRIPTS
    pattern = "|".join(re.escape(n) for n in names)
    html = re.sub(rf'\s*<script[^>]*src="(?:[^"]*/)?(?:{pattern})(?:\?[^"]*)?"[^>]*>\s*</script>', "", html)
    return re.sub(rf'\s*<link rel="preload" as="script" href="(?:[^"]*/)?(?:{pattern})(?:\?[^"]*)?"\s*/?>', "", html)


def translate_buttons(buttons: list[dict[str, Any]], config: Config, notebook: bool) -> None:
    """Texts and tooltips of sphinx-book-theme's header buttons in the edition's language; on a notebook page the
    launch buttons and the notebook download say that they open the English notebook."""
    language = language_of(config)
    for button in buttons:
        for key in ("text", "tooltip"):
            if isinstance(button.get(key), str):
                button[key] = ui(config, button[key])
        translate_buttons(button.get("buttons") or [], config, notebook)
        url = str(button.get("url", ""))
        if notebook and language in ENGLISH_NOTEBOOK and ("binder" in url or "colab" in url or url.endswith(".ipynb")):
            button["text"] = f"{button.get('text', '')}{ENGLISH_NOTEBOOK[language]}"
            button["tooltip"] = ENGLISH_NOTEBOOK_TOOLTIP[language]


def page_context(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    if language_of(app.config) != "en":
        notebook = str(context.get("page_source_suffix", "")) == ".ipynb"
        translate_buttons(context.get("header_buttons") or [], app.config, notebook)
        context["bnref_english_notebook"] = notebook and language_of(app.config) in ENGLISH_NOTEBOOK


def install_filters(app: Sphinx) -> None:
    builder = app.builder
    if hasattr(builder, "templates") and hasattr(builder.templates, "environment"):
        builder.templates.environment.filters["bnref_drop_scripts"] = drop_scripts
    # singlehtml: writers registered for the html builder only (myst-nb's HideCodeCellNode) serve it too.
    handlers = app.registry.translation_handlers
    if builder.name == "singlehtml" and "html" in handlers:
        handlers["singlehtml"] = {**handlers["html"], **handlers.get("singlehtml", {})}


def translate_config(app: Sphinx, config: Config) -> None:
    """sphinx-togglebutton's hints in the edition's language."""
    if language_of(config) != "en":
        config.togglebutton_hint = ui(config, "Click to show")
        config.togglebutton_hint_hide = ui(config, "Click to hide")


def translate_templates(app: Sphinx) -> None:
    """Template strings from ``UI_STRINGS`` before the catalogs of Sphinx, pydata-sphinx-theme (domain ``sphinx``:
    ``_()`` and ``{% trans %}`` in templates) and sphinx-book-theme (domain ``booktheme``)."""
    table = UI_STRINGS.get(language_of(app.config))
    if not table:
        return
    from sphinx import locale

    translators = [getattr(app, "translator", None)]
    translators += [t for (_, catalog), t in locale.translators.items() if catalog in ("sphinx", "booktheme")]
    for translator in translators:
        catalog = getattr(translator, "_catalog", None)
        if isinstance(catalog, dict):
            catalog.update(table)


def visit_hidden_cell(self: Any, node: nodes.Element) -> None:
    """myst-nb's hidden cell (``<details>``) with its labels in the edition's language (myst-nb writes an English
    ``aria-label``)."""
    config = self.builder.config
    classes = " ".join(node["classes"])
    self.body.append(f'<details class="admonition hide {classes}">\n')
    self.body.append(f'<summary aria-label="{escape(ui(config, "Toggle hidden content"))}">\n')
    self.body.append(f'<p class="collapsed admonition-title">{escape(node["prompt_show"])}</p>\n')
    self.body.append(f'<p class="expanded admonition-title">{escape(node["prompt_hide"])}</p>\n')
    self.body.append("</summary>\n")


def depart_hidden_cell(self: Any, node: nodes.Element) -> None:
    self.body.append("</details>\n")


def setup(app: Sphinx) -> dict[str, Any]:
    try:
        from myst_nb.sphinx_ import HideCodeCellNode
    except ImportError:  # a build without myst-nb has no hidden cells
        pass
    else:
        writers = (visit_hidden_cell, depart_hidden_cell)
        app.add_node(HideCodeCellNode, override=True, html=writers, singlehtml=writers)
    app.add_post_transform(FigureAltText)
    app.add_post_transform(TranslateCellToggles)
    app.connect("config-inited", translate_config, priority=100)  # before sphinx-togglebutton reads its hints
    app.connect("builder-inited", install_filters)
    app.connect("builder-inited", translate_templates)
    app.connect("builder-inited", ui_labels)
    app.connect("html-page-context", page_context, priority=900)
    app.add_js_file("bnref.js", loading_method="defer")
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

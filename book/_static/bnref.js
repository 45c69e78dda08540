/* Small additions to the pages of "Batch Normalization, verified" (book/_ext/bnref_site.py adds this file). */
(function () {
  "use strict";

  // Figures open at full size: each image a notebook drew links to its file (on a phone the page shows it at a
  // third of its width). Images already inside a link are left alone.
  function linkFigures() {
    document.querySelectorAll(".cell_output img, figure img").forEach(function (img) {
      if (img.closest("a")) return;
      var link = document.createElement("a");
      link.href = img.getAttribute("src");
      link.className = "bnref-figure-link";
      link.title = document.documentElement.lang.indexOf("zh") === 0 ? "打开原尺寸图片" : "Open the figure at full size";
      img.parentNode.insertBefore(link, img);
      link.appendChild(img);
    });
  }

  // Search results: Sphinx builds each snippet from the page's HTML, whose equations are still TeX source there;
  // an equation becomes "…" in the snippet instead.
  function snippetsWithoutTeX() {
    if (typeof Search === "undefined" || !Search.htmlToText) return;
    var htmlToText = Search.htmlToText;
    Search.htmlToText = function (htmlString, anchor) {
      var doc = new DOMParser().parseFromString(htmlString, "text/html");
      doc.querySelectorAll("span.math, div.math, mjx-container").forEach(function (math) {
        math.replaceWith(" … ");
      });
      return htmlToText.call(this, doc.documentElement.outerHTML, anchor);
    };
  }

  // Labels other extensions' scripts write in English (sphinx-togglebutton's buttons), in the edition's language:
  // BNREF_UI, English -> translation, is written into the page by book/_ext/bnref_site.py.
  function translateLabels() {
    if (typeof BNREF_UI === "undefined") return;
    document.querySelectorAll("[aria-label], [title]").forEach(function (e) {
      ["aria-label", "title"].forEach(function (name) {
        var value = e.getAttribute(name);
        if (value && Object.prototype.hasOwnProperty.call(BNREF_UI, value)) e.setAttribute(name, BNREF_UI[value]);
      });
    });
  }

  function ready() {
    linkFigures();
    translateLabels();
  }

  snippetsWithoutTeX();
  // A deferred script runs before DOMContentLoaded: wait for it, so sphinx-togglebutton's handler has run first.
  if (document.readyState !== "complete") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();

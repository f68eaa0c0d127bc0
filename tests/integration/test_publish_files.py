"""What `func azure functionapp publish` uploads: the app and nothing else.

Core Tools (Azure/azure-functions-core-tools, `Common/FileSystemHelpers.GetLocalFiles` and `Common/GitIgnoreParser`)
walks the project, always skips folders named `.git`/`.vscode` and files named `.funcignore`, `.gitignore`,
`local.settings.json`, `project.lock.json`, and keeps a file when `.funcignore`'s parser accepts its relative path.
That parser is a port of codemix/gitignore-parser, not git's rules: :func:`core_tools_accepts` is the same regexes
in Python. The file set is also checked with git's rules (pathspec), which other deployers (e.g. azd) follow.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

import pathspec
import pytest

from tests.helpers import REPO

ALWAYS_SKIPPED_DIRS = {".git", ".vscode"}
ALWAYS_SKIPPED_FILES = {".funcignore", ".gitignore", "local.settings.json", "project.lock.json"}
APP_FILES = {"function_app.py", "host.json", "requirements.txt"}
APP_PACKAGES = ("functions/", "fleetscore/", "scoring_job/")
ARTEFACTS = [  # what a working checkout holds besides the tracked files
    ".venv/bin/python", ".venv/lib/python3.11/site-packages/numpy/__init__.py", ".venv-aml-v1/bin/python",
    "node_modules/azurite/package.json", ".fleetscore/store/models/CURRENT", ".fleetscore/fleetscore.db",
    "fleetscore.egg-info/PKG-INFO", "__pycache__/function_app.cpython-311.pyc",
    "fleetscore/__pycache__/clock.cpython-311.pyc", "fleetscore/db/migrations/versions/__pycache__/x.cpython-311.pyc",
    "functions/__pycache__/ingest.cpython-311.pyc", "scoring_job/__pycache__/score.cpython-311.pyc",
    "scoring_job/stray.pyc", ".pytest_cache/v/cache/nodeids", ".ruff_cache/CACHEDIR.TAG", ".hypothesis/examples/a",
    "__azurite_db_blob__.json", "__blobstorage__/0a1b", "__queuestorage__/0a1b", "AzuriteConfig",
    "local.settings.json", ".env", ".benchcache/scores.parquet", "out/report.html", "build/lib/fleetscore/clock.py",
    ".git/HEAD", ".vscode/settings.json", "tests/__pycache__/conftest.cpython-311.pyc",
]


def _regex(pattern: str) -> str:
    """GitIgnoreParser.PrepareRegexPattern: escape, then `**` → `(.+)` and `*` → `([^/]+)`."""
    escaped = re.sub(r"[\-\[\]/{}()+?.\\^$|]", lambda m: "\\" + m.group(0), pattern)
    return escaped.replace("**", "(.+)").replace("*", "([^\\/]+)")


def core_tools_accepts(text: str) -> Callable[[str], bool]:
    """GitIgnoreParser.Accepts for a `.funcignore` text: a path is kept when a `!` pattern matches it or no
    other pattern does; each pattern is anchored at the start (`^`) and matches a prefix of the path."""
    positive: list[str] = []
    negative: list[str] = []
    for line in (raw.strip() for raw in text.split("\n")):
        if not line or line.startswith("#"):
            continue
        target = negative if line.startswith("!") else positive
        line = line.removeprefix("!").removeprefix("/")
        target.append(line)

    def compile_(patterns: list[str]) -> re.Pattern[str]:
        return re.compile("^((" + ")|(".join(_regex(p) for p in sorted(patterns)) + "))") if patterns \
            else re.compile("$^")

    pos, neg = compile_(positive), compile_(negative)
    return lambda path: bool(neg.match(path)) or not pos.match(path)


def candidate_files() -> list[str]:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted(set(tracked.splitlines()) | set(ARTEFACTS))


def always_skipped(path: str) -> bool:
    parts = path.split("/")
    return bool(ALWAYS_SKIPPED_DIRS & set(parts[:-1])) or parts[-1] in ALWAYS_SKIPPED_FILES


def expected(path: str) -> bool:
    parts = path.split("/")
    cache = "__pycache__" in parts or path.endswith(".pyc")
    return not cache and (path in APP_FILES or path.startswith(APP_PACKAGES))


@pytest.fixture(scope="module")
def funcignore() -> str:
    return (REPO / ".funcignore").read_text(encoding="utf-8")


def test_core_tools_publishes_the_app_and_nothing_else(funcignore):
    accepts = core_tools_accepts(funcignore)
    files = candidate_files()
    published = {f for f in files if not always_skipped(f) and accepts(f)}
    assert published == {f for f in files if expected(f)}
    assert published >= APP_FILES
    for package in APP_PACKAGES:
        assert f"{package}__init__.py" in published
    assert "fleetscore/db/migrations/script.py.mako" in published  # Alembic's template ships with the app


def test_the_same_file_set_under_gitignore_rules(funcignore):
    spec = pathspec.GitIgnoreSpec.from_lines(funcignore.splitlines())
    files = candidate_files()
    assert {f for f in files if not always_skipped(f) and not spec.match_file(f)} == {f for f in files if expected(f)}


def test_the_port_matches_core_tools_prefix_rules():
    """The differences from git that the `.funcignore` is written around."""
    accepts = core_tools_accepts("tests\n*.pyc\n!keep.pyc\n")
    assert not accepts("tests/unit/x.py") and not accepts("tests_more/x.py")  # a prefix, not a path segment
    assert not accepts("a.pyc") and accepts("pkg/a.pyc")  # anchored at the root: `*` does not cross `/`
    assert accepts("keep.pyc")  # a `!` pattern wins whatever the order

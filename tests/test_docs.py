"""The README and docs/ stay a README and a set of pages that link to each other correctly."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250

# [text](target) outside code; images too. Targets with a scheme are external.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _markdown_files() -> list[pathlib.Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def _relative_links(path: pathlib.Path) -> list[str]:
    targets = LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def _quick_start_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```\w*\n(.*?)^```", section.group(1), re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _ci_test_command() -> str:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    return lines[-1].strip()


def test_readme_is_at_most_250_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines, more than {MAX_README_LINES}"


def test_every_relative_link_resolves_to_a_file_and_heading():
    broken = []
    for page in _markdown_files():
        for target in _relative_links(page):
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Speed on a CPU\n\n[a](other.md) [b](#speed-on-a-cpu) "
                    "[c](#nowhere) `[d](ignored.md)`\n")
    assert _relative_links(page) == ["other.md", "#speed-on-a-cpu", "#nowhere"]
    assert _anchors(page) == {"title", "speed-on-a-cpu"}
    assert _slug("GPT-2's training step on a CPU") == "gpt-2s-training-step-on-a-cpu"
    assert _slug("Language models (GPT-1, GPT-2, GPT-3)") == "language-models-gpt-1-gpt-2-gpt-3"


def test_quick_start_holds_exactly_the_two_commands_ci_runs():
    commands = _quick_start_commands()
    ci_command = _ci_test_command()
    assert len(commands) == 2, f"Quick start should hold exactly two commands, has {commands}"
    run_main, run_tests = commands
    assert run_main.startswith("pip install -e . && python -m experiments."), run_main
    assert ci_command == run_tests, (ci_command, run_tests)
    assert run_tests in README.read_text(encoding="utf-8")

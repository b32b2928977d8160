"""The manual's own checks: README.md stays short, every relative link and anchor in it and in docs/ leads
somewhere, CI runs exactly the README's test command, and no file of the repository cites a document the
repository does not hold."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["cub200-cls", "cub200-cam", "cub200-seg", "imagenet-cls", "imagenet-cam", "imagenet-seg"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def read(relpath):
    with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
        return f.read()


def prose(text):
    """The text without fenced code blocks (links and headings there are code, not markdown)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading):
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text):
    found, seen = set(), {}
    for line in prose(text).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def pages():
    names = ["README.md", "resource/README.md"]
    names += [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs"))) if n.endswith(".md")]
    return names


def test_slug_follows_github():
    assert slug("What happens when ...") == "what-happens-when-"
    assert slug("Your own data (five commands)") == "your-own-data-five-commands"
    assert slug("Classifier results: top1top5.npy") == "classifier-results-top1top5npy"
    assert slug("wsolevaluation's protocol (`--protocol wsol`)") == "wsolevaluations-protocol---protocol-wsol"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_readme_is_at_most_300_lines():
    assert len(read("README.md").splitlines()) <= 300


@pytest.mark.parametrize("page", pages())
def test_every_relative_link_and_anchor_resolves(page):
    text = read(page)
    broken = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(ROOT, dest)):
            broken.append(f"{target}: no file {dest}")
        elif anchor and (not dest.endswith(".md") or anchor not in anchors(read(dest))):
            broken.append(f"{target}: no heading #{anchor} in {dest}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(t.partition("#")[0]) for t in LINK.findall(prose(read("README.md")))}
    missing = [p for p in pages() if p.startswith("docs") and p not in linked]
    assert not missing


def test_headings_name_every_stage_and_the_main_tasks():
    headings = "\n".join(re.findall(r"^#{1,6}\s+(.*)$", prose(read("README.md")), flags=re.M)).lower()
    tasks = ["torchrun", "authors", "own data", "openimages30k", "what happens when", "speed", "developing"]
    for word in STAGES + tasks:
        assert word in headings, word


def test_ci_runs_the_readmes_test_command():
    first_block = re.search(r"^```bash\n(.*?)^```", read("README.md"), flags=re.S | re.M).group(1)
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 and ".venv" in commands[0]
    ci = [line.strip() for line in read(".ci/run").splitlines()]
    assert commands[1].strip() in ci


# Documents that earlier copies of this code cited and this repository does not hold: a working note named in
# capitals, and anything under a folder named `shared` beside the checkout. The brackets ("SPE[C]", "shared[/]")
# keep this file's own patterns from matching themselves.
FOREIGN = re.compile(r"\bSPE[C]\b|(?<![\w./-])shared[/]")
DOCS_PATH = re.compile(r"\bdocs/[\w.-]+\.md")
METHOD_CITE = re.compile(r"docs/method\.md((?:,?\s*§\d+)+)")


def tracked_texts():
    """(path, text) of every file git tracks here that is UTF-8 text (images and other binaries are left out)."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):  # a worktree's is a file
        pytest.skip("not a git checkout: the tracked files are unknown")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for path in names.decode().split("\0"):
        full = os.path.join(ROOT, path)
        if not path or not os.path.isfile(full):
            continue
        with open(full, "rb") as f:
            data = f.read()
        try:
            yield path, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def test_no_file_cites_a_document_the_repository_lacks():
    found = [f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
             for path, text in tracked_texts() for m in FOREIGN.finditer(text)]
    assert not found, "cite docs/method.md §N or the paper instead: " + "; ".join(found)


def test_every_docs_page_named_in_the_code_exists():
    sections = {int(n) for n in re.findall(r"^## §(\d+) ", read("docs/method.md"), flags=re.M)}
    missing = []
    for path, text in tracked_texts():
        if not path.endswith(".py"):
            continue
        missing += [f"{path}: {name}" for name in DOCS_PATH.findall(text)
                    if not os.path.isfile(os.path.join(ROOT, name))]
        for cited in METHOD_CITE.findall(text):
            missing += [f"{path}: docs/method.md §{n}" for n in re.findall(r"\d+", cited) if int(n) not in sections]
    assert not missing, "no such page or section: " + "; ".join(missing)

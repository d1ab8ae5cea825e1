"""The README stays a README (<= 300 lines), and every relative link in it and in docs/ reaches a file and anchor."""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """`text` without fenced code blocks and code spans, where `[a](b)` is code, not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def _read(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def test_readme_is_at_most_300_lines():
    assert len(_read("README.md").splitlines()) <= 300


def test_anchors_follow_github():
    text = "# A\n## Guiding Diffusers pipelines: `apg.guide` and `pipelines/`\n## CFG-Zero*\n## A\n```\n# not\n```\n"
    assert anchors(text) == {"a", "a-1", "guiding-diffusers-pipelines-apgguide-and-pipelines", "cfg-zero"}


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_reach_a_file_and_anchor(page):
    broken = []
    for target in LINK.findall(_prose(_read(page))):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(REPO, resolved)):
            broken.append(f"{target} (no file {resolved})")
        elif anchor and (not resolved.endswith(".md") or anchor not in anchors(_read(resolved))):
            broken.append(f"{target} (no heading #{anchor} in {resolved})")
    assert not broken, f"{page}: broken links: {broken}"

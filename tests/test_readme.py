"""What the README promises about itself: ≤ 300 lines, a one-line set-up whose extras exist, the main job as its
first `dinofeat` line (a valid command on the real-weights model), the CI line equal to `.ci/run`'s, every linked
docs page present and in the docs site's nav."""

from __future__ import annotations

import re

import tomllib
from testutil import ROOT

README = (ROOT / "README.md").read_text()


def _fenced_lines() -> list[list[str]]:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
    return [[line for line in b.splitlines() if line.strip()] for b in blocks]


def test_readme_is_short_and_starts_with_one_setup_line_and_the_main_job():
    from dinofeat.cli import build_parser, resolve_stride

    assert len(README.splitlines()) <= 300
    blocks = _fenced_lines()
    setup = blocks[0]
    assert len(setup) == 1 and "pip install -e" in setup[0], setup
    extras = set(re.search(r'"\.\[([a-z0-9,-]+)\]"', setup[0]).group(1).split(","))
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared) and "pretrained" in extras and "test" in extras, extras
    first = next(line for b in blocks for line in b if line.startswith("dinofeat "))
    assert first.startswith("dinofeat match examples/img_a.png examples/img_b.png --model dinov2_vits14"), first
    args = build_parser().parse_args(first.split()[1:])
    resolve_stride(args)
    assert args.stride == 7 and (ROOT / args.img1).is_file() and (ROOT / args.img2).is_file()
    assert "```bash\npytest\n```" in README


def test_ci_line_in_readme_is_what_ci_installs():
    ci = re.search(r'pip install -q -e "\.\[([a-z0-9,-]+)\]"', (ROOT / ".ci" / "run").read_text()).group(1)
    assert f'pip install -e ".[{ci}]"' in README


def test_linked_docs_pages_exist_and_are_in_the_site_nav():
    linked = set(re.findall(r"\]\(docs/([^)#]+)", README))
    assert linked and all((ROOT / "docs" / p).is_file() for p in linked), linked
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    listed = set(re.findall(r":\s*([A-Za-z0-9_]+\.md)\s*$", nav, flags=re.M))
    assert pages == listed, (pages - listed, listed - pages)

"""The README and docs/*.md link only to files that exist and to headings that exist, as GitHub
renders them; the README stays a short front door with a table of contents."""
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
MAX_README_LINES = 300

FENCE = re.compile(r'^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$', re.M | re.S)
CODE_SPAN = re.compile(r'(`+)(?!`).*?(?<!`)\1(?!`)', re.S)
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$', re.M)
EXTERNAL = re.compile(r'^[a-z][a-z0-9+.-]*:', re.I)


def slug(heading):
    """GitHub's anchor for a heading: its text as rendered (links reduced to their text, code
    marks and emphasis dropped), lower-cased, punctuation and symbols dropped, spaces to '-'."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading).lower()
    kept = (ch for ch in text if ch in ' -' or unicodedata.category(ch)[0] in 'LM'
            or unicodedata.category(ch) in ('Nd', 'Nl', 'Pc'))
    return ''.join(kept).replace(' ', '-')


def prose(text):
    """``text`` without fenced code blocks and code spans, where nothing is a link."""
    return CODE_SPAN.sub('code', FENCE.sub('', text))


def headings(text):
    """(level, text) of every ATX heading outside code blocks."""
    return [(len(m.group(1)), m.group(2)) for m in HEADING.finditer(FENCE.sub('', text))]


def anchors(path):
    """Every anchor GitHub gives the headings of ``path``; a repeated slug gets -1, -2, ..."""
    seen, result = {}, set()
    for _, heading in headings(Path(path).read_text(encoding='utf-8')):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f'{base}-{count}')
    return result


def broken_links(path, root=ROOT):
    """One line for each relative link of the markdown file ``path`` whose file does not exist
    (or lies outside ``root``) or whose ``#anchor`` names no heading of the markdown it points to."""
    path = Path(path)
    problems = []
    for target in LINK.findall(prose(path.read_text(encoding='utf-8'))):
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition('#')
        linked = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not linked.exists() or not linked.is_relative_to(Path(root).resolve()):
            problems.append(f'{path.name}: {target}: no file {linked}')
        elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
            problems.append(f'{path.name}: {target}: no heading with the anchor #{anchor} in '
                            f'{linked.name}')
    return problems


def markdown_files():
    return [README] + sorted((ROOT / 'docs').glob('*.md'))


def test_slugs_follow_github():
    assert slug('Coming from mmdet / mmseg / mmaction2 / timm') == (
        'coming-from-mmdet--mmseg--mmaction2--timm')
    assert slug('Accuracy in miniature: `make reproduce` (real data, CPU)') == (
        'accuracy-in-miniature-make-reproduce-real-data-cpu')
    assert slug('Dr²Net, α×β map of snake_case') == 'drnet-αβ-map-of-snake_case'
    assert slug('See [the hook](docs/alpha_beta_hook.md)') == 'see-the-hook'


@pytest.mark.parametrize('path', markdown_files(), ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []


def test_a_broken_file_link_or_anchor_is_reported(tmp_path):
    repo = tmp_path / 'repo'
    repo.mkdir()
    (tmp_path / 'outside.md').write_text('# Outside\n')
    (repo / 'other.md').write_text('# Other\n\n## Kept section\n\n## Kept section\n')
    (repo / 'page.md').write_text(
        '# Page\n\n## Local part\n\n'
        'Good: [a](other.md), [b](other.md#kept-section), [c](other.md#kept-section-1), '
        '[d](#local-part), ![e](other.md), [f](https://example.com/none.md), `[g](missing.md)`.\n\n'
        'Bad: [h](missing.md), [i](other.md#gone), [j](#nowhere), [k](../outside.md).\n\n'
        '```\n[l](also_missing.md)\n```\n')
    problems = broken_links(repo / 'page.md', root=repo)
    assert [line.split(': ')[1] for line in problems] == [
        'missing.md', 'other.md#gone', '#nowhere', '../outside.md']


def test_pyproject_cites_docs_that_exist():
    """pyproject.toml's comments cite `docs/NAME.md#anchor` or `README: "Heading"`: both resolve."""
    text = (ROOT / 'pyproject.toml').read_text()
    cited = re.findall(r'((?:docs/[\w.-]+\.md|README\.md)(?:#[\w-]+)?)', text)
    cited += [f'README.md#{slug(heading)}' for heading in re.findall(r'README: "([^"]+)"', text)]
    assert cited, 'pyproject.toml names no document; update this test if that is intended'
    for reference in cited:
        file_part, _, anchor = reference.partition('#')
        assert (ROOT / file_part).exists(), reference
        assert not anchor or anchor in anchors(ROOT / file_part), reference


def test_readme_stays_within_300_lines():
    lines = README.read_text(encoding='utf-8').count('\n')
    assert lines <= MAX_README_LINES, (f'README.md has {lines} lines, more than {MAX_README_LINES}: '
                                       'move detail into docs/')


def test_readme_contents_link_every_section():
    text = README.read_text(encoding='utf-8')
    sections = [heading for level, heading in headings(text) if level == 2]
    assert 'Contents' in sections, 'README.md needs a "## Contents" section'
    contents = prose(text).split('## Contents', 1)[1].split('\n## ', 1)[0]
    listed = {target[1:] for target in LINK.findall(contents) if target.startswith('#')}
    missing = [h for h in sections if h != 'Contents' and slug(h) not in listed]
    assert missing == [], f'README.md sections missing from its Contents: {missing}'

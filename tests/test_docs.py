"""The repository's citations resolve to its own documentation (docs/).

Code comments and docstrings cite design notes as ``docs/<page>.md §N`` (a numbered section of
that page), ``docs/README.md decision N`` and ids such as A5 / C4 / K2 defined in
``docs/methods.md``. These tests check, without importing torch:

* docs/ has its pages, numbered sections and id lists (``test_docs_pages_and_ids``);
* every id used in comments / docstrings is defined in docs/methods.md
  (``test_ids_in_code_are_defined``);
* every cited section exists in the page the citation means, once mapped to docs/
  (``test_docs_cover_every_cited_section``) — this holds before and after the citations are
  rewritten;
* every citation in the Python sources (outside tests/; bench/ included) names a page of the
  repository by its path and a section that exists there
  (``test_python_citations_resolve_in_repository``), and likewise in the markdown pages
  README.md, CONTRIBUTING.md, patches/README.md and docs/decisions.md
  (``test_markdown_citations_resolve_in_repository``). Their failure messages list every
  offending file:line, grouped by file, with the suggested replacement.

Rules. A page name is resolved from the repository root ('docs/methods.md'; a name without a
folder must exist at the root, so 'methods.md' fails); in markdown pages also from the page's
folder. A '§N' (also '§9.3–9.4', '§1-§3', '§7, §9.8') belongs to the page named right after it
('§3 of docs/x.md'), else to the last page named before it on the same line, else — only when
the previous line of the same docstring / comment block *ends* with the page name — to that
page; otherwise it is bare, and a failure. 'spec README [decision N]', 'spec A5', 'spec §N' and
'../shared/spec' point outside the repository and are failures. Inside docs/, a bare '§N'
means a section of the same page. Ids (A1…, C1…, E1…, P1…, K1…, L1…, W1, F1, H1…, R2–R6; R1 is
also the R1 penalty, so it is not checked) are checked in comments and docstrings only.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, 'docs')
DOC_PAGES = ('README.md', 'methods.md', 'stylegan2-arithmetic.md', 'stylegan2-ada.md', 'data-and-weights.md')
# Markdown pages outside docs/ whose citations are checked (docs/ itself is checked for
# internal consistency by test_docs_cover_every_cited_section).
MARKDOWN_PAGES = ('README.md', 'CONTRIBUTING.md', 'patches/README.md', 'docs/decisions.md')
SKIP_DIRS = {'tests', '__pycache__', 'runs', 'data', 'out', 'build', 'dist', 'venv', 'env', 'node_modules', 'shared'}

# Ids that docs/methods.md must define (methods.md §8 and the property lists of §9).
REQUIRED_IDS = ([f'A{i}' for i in range(1, 14)] + [f'C{i}' for i in range(1, 7)] + ['E1', 'E2']
                + [f'P{i}' for i in range(1, 6)] + [f'K{i}' for i in range(1, 10)] + ['L1', 'L2', 'W1', 'F1']
                + [f'H{i}' for i in range(1, 11)] + [f'R{i}' for i in range(1, 7)])

# A page name: optional relative prefix and folders, ending in .md.
MD_NAME = re.compile(r'(?<![\w./-])((?:\.{1,2}/)*(?:[\w-]+/)*[\w.-]+\.md)(?![\w-])')
# A section citation, with an optional range: §9.3–9.4, §1-§3, §0–§2.
SECTION = re.compile(r'§\s?(\d+(?:\.\d+)*)(?:\s?[–-]\s?§?\s?(\d+(?:\.\d+)*))?')
# "spec README decision 5", "spec README, decision 4", a lone "spec README".
SPEC_README = re.compile(r'\b[Ss]pec\s+README(?:,?\s+decision\s+(\d+))?')
SPEC_ID = re.compile(r'\b[Ss]pec\s+([A-Z]\d{1,2})\b')
SHARED_SPEC = re.compile(r'(?:\.\./)*shared/spec\b/?')
DECISION = re.compile(r'\bdocs/README\.md,?\s+decisions?\s+(\d+)')
# An id token in a comment / docstring. R1 is also the R1 gradient penalty: only R2–R6 count.
ID_TOKEN = re.compile(r'\b([ACEKPLWFH]\d{1,2}|R[2-6])\b')
ID_DEF = re.compile(r'^\s*[-*]\s+\*\*([A-Z]\d{1,2})\b')
HEADING = re.compile(r'^#{1,6}\s+(\d+(?:\.\d+)*)[.)]?(?:\s|$)')
# A label directly before a bare § that says which page it means (patches/README.md: "Spec
# references are to methods.md"; "ADA §3.1" / "CHAIN §9.6" are sections of methods.md).
LABEL_BEFORE = re.compile(r'\b(spec|Spec|ADA|CHAIN)\s*$')
LABEL_PAGE = 'methods.md'
# Bare citations whose page neither the line nor the module header gives: (path, text on the
# line) → page under docs/.
BARE_OVERRIDES = (
    ('training/training_loop.py', 'G_ema ← lerp', 'stylegan2-arithmetic.md'),
)
# Default page for bare citations of a file whose header names none.
DEFAULT_PAGE = {'patches/README.md': 'methods.md'}


# ----------------------------------------------------------------------------------------------
# Reading pages and sources.

def _rel(path: str) -> str:
    return os.path.relpath(path, REPO).replace(os.sep, '/')


def _read(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def _lines_outside_fences(text: str) -> list[tuple[int, str]]:
    out, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith('```'):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, line))
    return out


@lru_cache(maxsize=None)
def _sections(page: str) -> frozenset[str]:
    """Section numbers of a markdown page: headings '## 9. Title', '### 9.7 Title', …"""
    found = set()
    for _, line in _lines_outside_fences(_read(page)):
        m = HEADING.match(line)
        if m:
            found.add(m.group(1))
    return frozenset(found)


@lru_cache(maxsize=None)
def _decisions() -> frozenset[str]:
    """Numbers of the list 'Decisions that hold across the project' in docs/README.md."""
    text = _read(os.path.join(DOCS, 'README.md'))
    part = text.split('## Decisions that hold across the project', 1)
    if len(part) < 2:
        return frozenset()
    return frozenset(m.group(1) for m in re.finditer(r'^(\d+)\.\s', part[1], re.M))


@lru_cache(maxsize=None)
def _defined_ids() -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, line in _lines_outside_fences(_read(os.path.join(DOCS, 'methods.md'))):
        m = ID_DEF.match(line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def _python_files() -> list[str]:
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d not in SKIP_DIRS
                         and not d.endswith('.egg-info'))
        files += [os.path.join(root, n) for n in sorted(names) if n.endswith('.py')]
    return files


def _expand(a: str, b: Optional[str]) -> list[str]:
    """'9.3', '9.4' → ['9.3', '9.4']; '0', '2' → ['0', '1', '2']; a single number → [a]."""
    if b is None:
        return [a]
    pa, pb = a.split('.'), b.split('.')
    if len(pa) == len(pb) and pa[:-1] == pb[:-1] and int(pa[-1]) <= int(pb[-1]) <= int(pa[-1]) + 20:
        return ['.'.join(pa[:-1] + [str(i)]) for i in range(int(pa[-1]), int(pb[-1]) + 1)]
    return [a, b]


def _resolve(name: str, source: str, markdown: bool) -> Optional[str]:
    """The file a page name means, or None. Python: relative to the repository root only (a
    bare 'methods.md' must exist at the root); markdown: relative to the page, then the root."""
    bases = [os.path.dirname(source), REPO] if markdown else [REPO]
    for base in bases:
        path = os.path.normpath(os.path.join(base, name))
        if os.path.isfile(path) and (path + os.sep).startswith(REPO + os.sep):
            return path
    return None


def _docs_page(name: str) -> Optional[str]:
    """The docs/ page an unresolved name stands for ('methods.md' → docs/methods.md)."""
    path = os.path.join(DOCS, os.path.basename(name))
    return path if os.path.isfile(path) else None


# ----------------------------------------------------------------------------------------------
# Finding citations.

@dataclass
class Citation:
    path: str                      # repository-relative source file
    line: int
    original: str                  # the text as written
    page: Optional[str]            # the page it means (resolved, or the docs/ page it stands for)
    sections: list[str] = field(default_factory=list)
    decision: Optional[str] = None
    ident: Optional[str] = None
    problem: Optional[str] = None  # None: resolves inside the repository as written
    suggestion: str = ''


def _py_blocks(text: str) -> list[tuple[int, int]]:
    """Line spans of multi-line strings and of runs of consecutive comment lines."""
    spans, comment_lines = [], []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                spans.append((tok.start[0], tok.end[0]))
            elif tok.type == tokenize.COMMENT:
                comment_lines.append(tok.start[0])
    except (tokenize.TokenError, SyntaxError):
        pass
    run: list[int] = []
    for n in comment_lines + [None]:
        if run and (n is None or n != run[-1] + 1):
            spans.append((run[0], run[-1]))
            run = []
        if n is not None:
            run.append(n)
    return spans


def _header_page(text: str, markdown: bool, rel: str) -> Optional[str]:
    """The page a file's bare citations mean: the first page its module docstring (or, failing
    that, the file) names."""
    if rel in DEFAULT_PAGE:
        return DEFAULT_PAGE[rel]
    head = text
    if not markdown:
        try:
            head = ast.get_docstring(ast.parse(text), clean=False) or text
        except SyntaxError:
            pass
    for m in MD_NAME.finditer(head):
        if _docs_page(m.group(1)) and os.path.basename(m.group(1)) != 'README.md':
            return os.path.basename(m.group(1))
    return None


def _bare_page(rel: str, lines: list[str], n: int, prefix: str, blocks: list[tuple[int, int]],
               header: Optional[str]) -> Optional[str]:
    """Which docs/ page a bare '§N' on line n most likely means (a hint for the to-do list)."""
    line = lines[n - 1]
    for path, text, page in BARE_OVERRIDES:
        if rel == path and text in line:
            return page
    if LABEL_BEFORE.search(prefix):
        return LABEL_PAGE
    # A sentence wrapped from the previous line of the same docstring / comment block.
    if n > 1 and any(a <= n - 1 and n <= b for a, b in blocks):
        names = [m.group(1) for m in MD_NAME.finditer(lines[n - 2]) if _docs_page(m.group(1))]
        if names:
            return os.path.basename(names[-1])
    return header


def _same_block(n: int, lines: list[str], blocks: list[tuple[int, int]], markdown: bool) -> bool:
    """Lines n − 1 and n belong to one docstring / comment block (markdown: one paragraph)."""
    if n < 2:
        return False
    if markdown:
        return bool(lines[n - 2].strip()) and bool(lines[n - 1].strip())
    return any(a <= n - 1 and n <= b for a, b in blocks)


def _citations(source: str, markdown: bool) -> list[Citation]:
    """Every citation in one file. A section belongs to the page named right after it
    ('§3 of docs/training.md'), else to the last page named before it on the line, else — when
    the previous line of the same block *ends* with a page name ('docs/methods.md' / '§3 (ADA)'
    on the next line) — to that page; otherwise it is bare."""
    rel = _rel(source)
    text = _read(source)
    lines = text.splitlines()
    numbered = _lines_outside_fences(text) if markdown else list(enumerate(lines, 1))
    blocks = [] if markdown else _py_blocks(text)
    header = _header_page(text, markdown, rel)
    in_docs = markdown and rel.startswith('docs/') and os.path.basename(rel) in DOC_PAGES
    out: list[Citation] = []
    tail: Optional[tuple[int, Citation]] = None  # (line, citation) of a page name ending its line
    for n, line in numbered:
        names = list(MD_NAME.finditer(line))
        sections = list(SECTION.finditer(line))
        carried = tail[1] if tail and tail[0] == n - 1 and _same_block(n, lines, blocks, markdown) else None
        tail = None
        owner: dict[int, Optional[int]] = {}  # section index → name index (-1: carried, None: bare)
        for j, s in enumerate(sections):
            after = re.match(r'\s+(?:of|in)\s+', line[s.end():])
            if after and any(m.start() == s.end() + after.end() for m in names):
                owner[j] = next(i for i, m in enumerate(names) if m.start() == s.end() + after.end())
            elif any(m.end() <= s.start() for m in names):
                owner[j] = max(i for i, m in enumerate(names) if m.end() <= s.start())
            elif carried is not None:
                owner[j] = -1
            else:
                owner[j] = None
        for j, s in enumerate(sections):
            if owner[j] == -1:
                carried.sections += [x for x in _expand(s.group(1), s.group(2)) if x not in carried.sections]
        # Page names, with the sections they own.
        for i, m in enumerate(names):
            nums: list[str] = []
            for j, s in enumerate(sections):
                if owner[j] == i:
                    nums += [x for x in _expand(s.group(1), s.group(2)) if x not in nums]
            name = m.group(1)
            resolved = None if SHARED_SPEC.match(name) else _resolve(name, source, markdown)
            c = Citation(rel, n, name, resolved or _docs_page(name), nums)
            if resolved is None:
                c.problem = ('points outside the repository (../shared/spec)' if SHARED_SPEC.match(name)
                             else 'page not in the repository')
                c.suggestion = f'docs/{os.path.basename(name)}' if c.page else '(no docs/ page of that name)'
            out.append(c)
            if i == len(names) - 1 and not line[m.end():].strip(' `*'):
                tail = (n, c)
        # Bare sections.
        for j, s in enumerate(sections):
            if owner[j] is not None:
                continue
            prefix = line[:s.start()]
            label = LABEL_BEFORE.search(prefix)
            original = (label.group(1) + ' ' if label else '') + s.group(0).strip()
            nums = _expand(s.group(1), s.group(2))
            if in_docs:  # inside docs/, a bare § means the same page
                out.append(Citation(rel, n, original, source, nums))
                continue
            page = _bare_page(rel, lines, n, prefix, blocks, header)
            c = Citation(rel, n, original, os.path.join(DOCS, page) if page else None, nums,
                         problem='bare section (no page named before it on the line)')
            c.suggestion = f'docs/{page} {s.group(0).strip()}' if page else '(page unknown)'
            out.append(c)
        for m in SPEC_README.finditer(line):
            c = Citation(rel, n, m.group(0), os.path.join(DOCS, 'README.md'), decision=m.group(1),
                         problem='the spec README is not part of the repository')
            c.suggestion = f'docs/README.md decision {m.group(1)}' if m.group(1) else 'docs/README.md'
            out.append(c)
        for m in SPEC_ID.finditer(line):
            c = Citation(rel, n, m.group(0), os.path.join(DOCS, 'methods.md'), ident=m.group(1),
                         problem='the spec is not part of the repository')
            c.suggestion = f'docs/methods.md {m.group(1)}'
            out.append(c)
        for m in SHARED_SPEC.finditer(line):
            if any(x.start() <= m.start() < x.end() for x in names):
                continue  # a page name under shared/spec: reported above
            out.append(Citation(rel, n, m.group(0), None, problem='points outside the repository (../shared/spec)',
                                suggestion='docs/'))
        for m in DECISION.finditer(line):
            out.append(Citation(rel, n, m.group(0), os.path.join(DOCS, 'README.md'), decision=m.group(1)))
    return out


@lru_cache(maxsize=None)
def _python_citations() -> tuple[Citation, ...]:
    return tuple(c for f in _python_files() for c in _citations(f, markdown=False))


@lru_cache(maxsize=None)
def _markdown_citations() -> tuple[Citation, ...]:
    pages = [os.path.join(REPO, p) for p in MARKDOWN_PAGES if os.path.isfile(os.path.join(REPO, p))]
    return tuple(c for p in pages for c in _citations(p, markdown=True))


@lru_cache(maxsize=None)
def _docs_citations() -> tuple[Citation, ...]:
    return tuple(c for p in DOC_PAGES for c in _citations(os.path.join(DOCS, p), markdown=True))


def _coverage_problems(c: Citation) -> list[str]:
    """What is missing in docs/ for this citation to be resolvable once rewritten."""
    if c.page is None:
        return []  # a page that does not exist: reported by the *_resolve_in_repository tests
    problems = []
    missing = [s for s in c.sections if s not in _sections(c.page)]
    if missing:
        problems.append(f'{_rel(c.page)} has no section ' + ', '.join('§' + s for s in missing))
    if c.decision and c.decision not in _decisions():
        problems.append(f'docs/README.md has no decision {c.decision}')
    if c.ident and c.ident not in _defined_ids():
        problems.append(f'docs/methods.md does not define {c.ident}')
    return problems


def _todo(findings: list[Citation], title: str) -> str:
    by_file: dict[str, list[Citation]] = {}
    for c in findings:
        by_file.setdefault(c.path, []).append(c)
    out = [f'{len(findings)} citations in {len(by_file)} files do not resolve inside the repository '
           f'({title}). Rewrite each as suggested:', '']
    out += [f'  {len(v):3d}  {k}' for k, v in sorted(by_file.items())]
    for path, items in sorted(by_file.items()):
        out += ['', f'{path} ({len(items)})']
        for c in sorted(items, key=lambda c: c.line):
            secs = f' ({", ".join("§" + s for s in c.sections)})' if c.sections and '§' not in c.original else ''
            out.append(f'  {path}:{c.line}: `{c.original}`{secs} → `{c.suggestion}`   [{c.problem}]')
    return '\n'.join(out)


# ----------------------------------------------------------------------------------------------
# Tests.

def test_docs_pages_and_ids():
    for page in DOC_PAGES:
        assert os.path.isfile(os.path.join(DOCS, page)), f'docs/{page} is missing'
    for page in DOC_PAGES[1:]:
        assert len(_sections(os.path.join(DOCS, page))) >= 3, f'docs/{page} has no numbered sections'
    assert _decisions() == frozenset(str(i) for i in range(1, 12)), \
        f'docs/README.md must list decisions 1–11, has {sorted(_decisions(), key=int)}'
    ids = _defined_ids()
    missing = [i for i in REQUIRED_IDS if i not in ids]
    twice = sorted(i for i, n in ids.items() if n > 1)
    assert not missing, f'docs/methods.md does not define {missing} (as "- **ID** …" list items)'
    assert not twice, f'docs/methods.md defines {twice} more than once'


def _comments_and_docstrings(path: str) -> list[tuple[int, str]]:
    text = _read(path)
    out = []
    try:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                for i, line in enumerate(node.value.value.splitlines()):
                    out.append((node.lineno + i, line))
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out.append((tok.start[0], tok.string))
    except (SyntaxError, tokenize.TokenError):
        pass
    return out


def test_ids_in_code_are_defined():
    defined = _defined_ids()
    bad = []
    for path in _python_files():
        for n, text in _comments_and_docstrings(path):
            for m in ID_TOKEN.finditer(text):
                if m.group(1) not in defined:
                    bad.append(f'  {_rel(path)}:{n}: {m.group(1)}   in: {text.strip()[:100]}')
    assert not bad, 'ids used in comments / docstrings but not defined in docs/methods.md:\n' + '\n'.join(bad)


def test_docs_cover_every_cited_section():
    """Every citation — in the code, in the markdown pages and inside docs/ — maps to a page of
    docs/ that has the cited section (or decision, or id). Holds before the rewrite (the map is
    the suggested replacement) and after it (the map is the citation itself)."""
    bad = []
    for c in _python_citations() + _markdown_citations() + _docs_citations():
        for problem in _coverage_problems(c):
            bad.append(f'  {c.path}:{c.line}: `{c.original}` {c.sections or ""} → {problem}')
    for c in _docs_citations():
        if c.problem:
            bad.append(f'  {c.path}:{c.line}: `{c.original}` → {c.problem}')
    assert not bad, 'docs/ does not cover these citations:\n' + '\n'.join(bad)


def test_python_citations_resolve_in_repository():
    """To-do list for the final pass: each citation must name a repository page by its path
    ('docs/methods.md §9.7', not 'methods.md §9.7', '§9.7' or 'spec §9.7')."""
    findings = [c for c in _python_citations() if c.problem]
    assert not findings, _todo(findings, 'Python sources outside tests/')


def test_markdown_citations_resolve_in_repository():
    findings = [c for c in _markdown_citations() if c.problem]
    assert not findings, _todo(findings, 'markdown pages ' + ', '.join(MARKDOWN_PAGES))


@pytest.mark.parametrize('line, expected', [
    ('see methods.md §9.3–9.4 and §5', ['9.3', '9.4', '5']),
    ('stylegan2-arithmetic.md §1-§3, §9', ['1', '2', '3', '9']),
    ('data-and-weights.md §0–§2', ['0', '1', '2']),
    ('§7.4, §8.4 (§6 step 1); §1.2, steps 1-4', ['7.4', '8.4', '6', '1.2']),
])
def test_section_parser(line, expected):
    assert [x for s in SECTION.finditer(line) for x in _expand(s.group(1), s.group(2))] == expected


def test_id_tokens_ignore_other_words():
    text = 'C1C2CS, fp16, R1 penalty, 0xA5, K2 / F1 / W1, A1–A13, R5'
    assert [m.group(1) for m in ID_TOKEN.finditer(text)] == ['K2', 'F1', 'W1', 'A1', 'A13', 'R5']

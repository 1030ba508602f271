#!/usr/bin/python3
"""Checks README.md and docs/ against the code and against themselves.

    readme_test.py REPO_ROOT

Fails (exit 1, one line per problem) unless:
  - README.md has a ```cpp fenced block whose lines are exactly the lines between
    `// [readme-loop]` and `// [/readme-loop]` in examples/mlp_adamw/main.cc (the program
    tests/install_test.sh builds and runs against the installed package), compared after removing
    the region's common indentation (the README may show it unindented) and trailing blanks;
  - README.md has at most 285 lines;
  - README.md and docs/*.md refer to nothing outside the repository: no section sign, no
    `shared/spec` or `spec/` paths, no `DESIGN.md`, no "issue N";
  - every relative link in README.md and docs/*.md names an existing file, and every `#anchor`
    in such a link (or a bare `#anchor`) names a heading (GitHub's anchor rules) or an explicit
    `<a id="...">` / `<a name="...">` of the target file.
"""
import os
import re
import sys
import textwrap

MAX_README_LINES = 285
BEGIN_MARK = "// [readme-loop]"
END_MARK = "// [/readme-loop]"

FORBIDDEN = [
    (re.compile("\u00a7"), "a section sign (a reference to an outside spec)"),
    (re.compile(r"shared/spec"), "a shared/spec path"),
    (re.compile(r"(?<![\w./-])spec/"), "a spec/ path"),
    (re.compile(r"DESIGN\.md"), "a DESIGN.md reference"),
    (re.compile(r"\bissue\s*#?\d+", re.IGNORECASE), "an \"issue N\" reference"),
]

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)\s*$")
# [text](target) and [text]: target reference definitions; images too.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")


def fenced_blocks(lines):
    """(language, [lines]) for every fenced block; also the set of line numbers inside fences."""
    blocks, inside, lang, body, opener = [], set(), None, [], None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if opener is None:
            if m:
                opener, lang, body = m.group(1), m.group(2), []
                inside.add(i)
            continue
        inside.add(i)
        if m and m.group(1) == opener and not m.group(2):
            blocks.append((lang, body))
            opener = None
            continue
        body.append(line)
    return blocks, inside


def strip_trailing_blank(lines):
    lines = [l.rstrip() for l in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def loop_region(main_cc):
    lines = read_lines(main_cc)
    starts = [i for i, l in enumerate(lines) if l.strip() == BEGIN_MARK]
    ends = [i for i, l in enumerate(lines) if l.strip() == END_MARK]
    if len(starts) != 1 or len(ends) != 1 or ends[0] <= starts[0]:
        return None
    return lines[starts[0] + 1:ends[0]]


def github_slug(text):
    """The anchor GitHub gives a heading: inline markup dropped, lower case, punctuation removed
    (letters, digits, '_', '-' and spaces kept), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text)                      # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path, cache):
    if path in cache:
        return cache[path]
    lines = read_lines(path)
    _, inside = fenced_blocks(lines)
    seen, out = {}, set()
    for i, line in enumerate(lines):
        for a in HTML_ANCHOR.findall(line):
            out.add(a)
        if i in inside:
            continue
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    cache[path] = out
    return out


def links_of(lines):
    _, inside = fenced_blocks(lines)
    for i, line in enumerate(lines):
        if i in inside:
            continue
        # Inline code spans are not links.
        text = re.sub(r"`[^`]*`", "", line)
        for target in INLINE_LINK.findall(text):
            yield i + 1, target
        m = REF_DEF.match(text)
        if m:
            yield i + 1, m.group(1)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().split("\n")[2].strip(), file=sys.stderr)
        return 2
    root = os.path.abspath(argv[1])
    readme = os.path.join(root, "README.md")
    docs_dir = os.path.join(root, "docs")
    main_cc = os.path.join(root, "examples", "mlp_adamw", "main.cc")
    problems = []

    if not os.path.isfile(readme):
        print(f"readme_test: {readme}: missing")
        return 1
    readme_lines = read_lines(readme)
    docs = sorted(os.path.join(docs_dir, n) for n in os.listdir(docs_dir)
                  if n.endswith(".md")) if os.path.isdir(docs_dir) else []
    if not docs:
        problems.append(f"{docs_dir}: no *.md files")

    # 1. The loop excerpt is the compiled example's marked region.
    region = loop_region(main_cc)
    if region is None:
        problems.append(f"{main_cc}: expected exactly one `{BEGIN_MARK}` ... `{END_MARK}` region")
    else:
        want = strip_trailing_blank(region)
        want_dedented = strip_trailing_blank(textwrap.dedent("\n".join(region)).split("\n"))
        blocks, _ = fenced_blocks(readme_lines)
        cpp = [strip_trailing_blank(body) for lang, body in blocks if lang in ("cpp", "c++")]
        if not want:
            problems.append(f"{main_cc}: the readme-loop region is empty")
        elif want not in cpp and want_dedented not in cpp:
            problems.append(
                "README.md: no ```cpp block holds exactly the lines between the readme-loop markers "
                f"of examples/mlp_adamw/main.cc ({len(want)} lines, starting "
                f"{want_dedented[0]!r}); copy them (unindented) into the README's block")
        if len(want) > 15:
            problems.append(f"{main_cc}: the readme-loop region has {len(want)} lines (at most 15)")

    # 2. Length.
    n = len(readme_lines) - (1 if readme_lines and readme_lines[-1] == "" else 0)
    if n > MAX_README_LINES:
        problems.append(f"README.md: {n} lines, at most {MAX_README_LINES} (move detail to docs/)")

    # 3. Nothing outside the repository; 4. links resolve.
    anchor_cache = {}
    for path in [readme] + docs:
        rel = os.path.relpath(path, root)
        lines = read_lines(path)
        for i, line in enumerate(lines, 1):
            for pattern, what in FORBIDDEN:
                if pattern.search(line):
                    problems.append(f"{rel}:{i}: {what}: {line.strip()[:100]}")
        for lineno, target in links_of(lines):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto: ...
            file_part, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
                if file_part else path
            if not dest.startswith(root + os.sep) and dest != root:
                problems.append(f"{rel}:{lineno}: link {target} leaves the repository")
                continue
            if not os.path.exists(dest):
                problems.append(f"{rel}:{lineno}: link {target}: no such file")
                continue
            if anchor and dest.endswith(".md") and anchor not in anchors_of(dest, anchor_cache):
                problems.append(f"{rel}:{lineno}: link {target}: no heading or anchor "
                                f"#{anchor} in {os.path.relpath(dest, root)}")

    for p in problems:
        print(f"readme_test: {p}")
    if problems:
        return 1
    print(f"readme_test: ok (README.md {n} lines, {len(docs)} docs, loop excerpt "
          f"{len(region or [])} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The include graph of core/, widgets/ and app/ against docs/architecture.md's allowed arrows.

Each source file belongs to a part (core/<part>/..., core's loose files, widgets, app); every
`#include "..."` of one of our headers is an arrow from the file's part to the header's part. An
arrow that the list under "## Allowed dependencies" does not have is a violation, and so is a
LibTorch include outside the files allowed to have one, or a file that includes both Qt and
LibTorch (Qt's `slots` macro breaks ATen's headers).
"""
import os
import re

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
LOOSE = {"error": "base", "jsonfile": "base", "version": "base", "rng": "base", "demo": "workflow", "workflow": "workflow", "corpus": "workflow", "routing_import": "workflow"}


def part_of(rel):
    """The part a file (path relative to the repository root) belongs to, or None."""
    p = rel.split("/")
    if p[0] == "core":
        if len(p) == 2:
            return LOOSE.get(os.path.splitext(p[1])[0])
        return p[1]
    if p[0] in ("widgets", "app"):
        return p[0]
    return None


def allowed_arrows(doc_text):
    """{part: set(parts it may include)} from the "## Allowed dependencies" list, and the files
    allowed to include LibTorch."""
    sec = doc_text.split("## Allowed dependencies", 1)
    assert len(sec) == 2, "docs/architecture.md has no '## Allowed dependencies' section"
    body = sec[1].split("\n## ", 1)[0]
    arrows, torch_files = {}, set()
    for line in body.splitlines():
        m = re.match(r"^- `?([a-z_]+)`?: (.*)$", line.strip())
        if m:
            deps = {d.strip(" `") for d in m.group(2).split(",") if d.strip() and d.strip() != "(nothing)"}
            arrows[m.group(1)] = deps
        m = re.match(r"^- LibTorch: (.*)$", line.strip())
        if m:
            torch_files = {f.strip(" `") for f in m.group(1).split(",")}
    return arrows, torch_files


def resolve(root, rel, header):
    """Our file that `#include "header"` in `rel` names, relative to root, or None (system/generated)."""
    here = os.path.dirname(rel)
    for base in ("core", here, "widgets", "app/gui", "app/cli"):
        cand = os.path.normpath(os.path.join(base, header))
        if os.path.isfile(os.path.join(root, cand)):
            return cand
    return None


def acyclic(arrows):
    seen, stack = set(), set()

    def visit(n):
        if n in stack:
            return False
        if n in seen:
            return True
        stack.add(n)
        ok = all(visit(d) for d in arrows.get(n, ()))
        stack.discard(n)
        seen.add(n)
        return ok

    return all(visit(n) for n in arrows)


def check(root):
    """Violations (strings) of the tree at root."""
    with open(os.path.join(root, "docs", "architecture.md"), encoding="utf-8") as f:
        arrows, torch_files = allowed_arrows(f.read())
    problems = []
    if not acyclic(arrows):
        problems.append("docs/architecture.md: the allowed dependencies have a cycle")
    for top in ("core", "widgets", "app"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith((".cpp", ".h", ".inc")):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                src = part_of(rel)
                if src is None:
                    problems.append(f"{rel}: belongs to no part (docs/architecture.md)")
                    continue
                if src not in arrows:
                    problems.append(f"{rel}: part '{src}' is not in the allowed dependencies")
                    continue
                with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                qt = torch = False
                for kind, header in INCLUDE.findall(text):
                    if kind == "<":
                        qt = qt or header.startswith(("Q", "qcustomplot"))
                        torch = torch or header.startswith(("torch/", "ATen/", "c10/"))
                        continue
                    target = resolve(root, rel, header)
                    if target is None:
                        continue
                    if target.replace(os.sep, "/") == "core/model/model_impl.h":
                        torch = True
                    dst = part_of(target.replace(os.sep, "/"))
                    if dst is None or dst == src:
                        continue
                    if dst not in arrows[src]:
                        problems.append(f"{rel}: includes {header} ({src} -> {dst} is not an allowed arrow)")
                if torch and rel.replace(os.sep, "/") not in torch_files:
                    problems.append(f"{rel}: includes LibTorch but is not listed as a LibTorch file")
                if torch and qt:
                    problems.append(f"{rel}: includes both Qt and LibTorch")
    return problems

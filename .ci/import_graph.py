#!/usr/bin/env python3
"""The import graph between the files of a Rust crate, and its cycles.

    .ci/import_graph.py actors/src [src ...]      prints files, arrows and cycles; exit 1 on a cycle

An arrow goes from a file to the file that defines the module a path names: every `use` item
and every inline path that starts with `crate::`, `super::` or `self::` counts (a re-export
through `lib.rs` is an arrow to `lib.rs`). `mod x;` declarations are not arrows: a parent owns
its children, it does not depend on them. A cycle is a strongly connected set of two or more
files. Deterministic and dependency-free, so CI can run it on every push.
"""

import os
import re
import sys

USE_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.M | re.S)
INLINE_RE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
COMMENT_RE = re.compile(r"//[^\n]*")


def module_files(root):
    """Maps a module path (tuple of names) to its file, for one crate rooted at `root`.

    With both `lib.rs` and `main.rs`, `lib.rs` is the root of the modules and `main.rs` is a
    crate of its own (the binary, which reaches the library by its name, not by `crate::`):
    it is left out, having no arrow into these files."""
    files = {}
    has_lib = os.path.exists(os.path.join(root, "lib.rs"))
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            parts = rel[:-3].split(os.sep)
            if parts == ["main"] and has_lib:
                continue
            if parts[-1] in ("lib", "main") and len(parts) == 1:
                parts = []
            elif parts[-1] == "mod":
                parts = parts[:-1]
            files[tuple(parts)] = os.path.join(dirpath, name)
    return files


def expand(tree):
    """`a::{b, c::{d, e}}` → [`a::b`, `a::c::d`, `a::c::e`] (names only; `as` dropped)."""
    tree = re.sub(r"\s+as\s+[A-Za-z_][A-Za-z0-9_]*", "", tree)  # `x as y` names x
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    out = []
    for part in parts:
        if part:
            out.extend(prefix + p for p in expand(part))
    return out


def resolve(path, here, files):
    """The file that defines the longest module prefix of `path` seen from module `here`."""
    names = [n for n in path.split("::") if n]
    if not names:
        return None
    if names[0] == "crate":
        mod, names = [], names[1:]
    elif names[0] in ("super", "self"):
        mod = list(here)
        while names and names[0] in ("super", "self"):
            if names[0] == "super":
                mod = mod[:-1]
            names = names[1:]
    elif tuple(here) + (names[0],) in files:
        mod = list(here)  # a child module, named without `self::` (2018 paths)
    else:
        return None  # another crate, or an item of this module
    best = files.get(tuple(mod))
    for n in names:
        mod.append(n)
        if tuple(mod) in files:
            best = files[tuple(mod)]
        else:
            break
    return best


def flatten_inline_modules(text):
    """Inside an inline `mod name { ... }`, `super::` names the file's own module: rewrite it
    to `self::` so that the arrow is the file's (one level of nesting is all this crate uses)."""
    out, pos = [], 0
    for m in re.finditer(r"\bmod\s+[a-z_][a-z0-9_]*\s*\{", text):
        if m.start() < pos:
            continue
        depth, i = 0, m.end() - 1
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        out.append(text[pos : m.end()])
        out.append(text[m.end() : i].replace("super::", "self::"))
        pos = i
    out.append(text[pos:])
    return "".join(out)


def graph(root):
    files = module_files(root)
    module_of = {f: m for m, f in files.items()}
    edges = {f: set() for f in files.values()}
    for f in files.values():
        here = module_of[f]
        text = COMMENT_RE.sub("", open(f, encoding="utf-8").read())
        # `#[cfg(test)] mod tests { ... }` at the end of a file is the file's own tests.
        tests = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{", text)
        if tests:
            text = text[: tests.start()]
        text = flatten_inline_modules(text)
        paths = []
        for m in USE_RE.finditer(text):
            paths.extend(expand(m.group(1)))
        # A `use` inside a `mod tests` block of a file is that file's own business.
        body = USE_RE.sub("", text)
        paths.extend(INLINE_RE.findall(body))
        for p in paths:
            target = resolve(p, here, files)
            if target and target != f:
                edges[f].add(target)
    return edges


def cycles(edges):
    """Tarjan's strongly connected components with two or more files."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(roots):
    failed = False
    for root in roots:
        edges = graph(root)
        found = cycles(edges)
        arrows = sum(len(t) for t in edges.values())
        print(f"{root}: {len(edges)} files, {arrows} arrows, {len(found)} import cycles")
        for comp in found:
            failed = True
            print("  cycle: " + " ".join(os.path.relpath(f, root) for f in comp))
            for f in comp:
                inside = sorted(os.path.relpath(t, root) for t in edges[f] if t in comp)
                print(f"    {os.path.relpath(f, root)} -> {' '.join(inside)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["actors/src", "src"]))

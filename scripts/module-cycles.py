#!/usr/bin/env python3
"""Import circles in a crate's `src/` that cross folders.

Reads every `crate::…` and `super::…` path in the sources (use declarations and inline
paths) and resolves it to the file that defines the item: a name a `mod.rs` or the
crate root re-exports is followed to the file it comes from, so a folder's front door
does not count as a dependency on all of it. Then prints each folder's dependencies on
the others and every import circle (a strongly connected group of files) that spans
more than one folder. Exits non-zero when there is one: a module's imports should
read as what it stands on.

usage: scripts/module-cycles.py [SRC_DIR ...]   (default: src mcp-auth-proxy/src)
"""
import pathlib
import re
import sys


def module_files(src):
    """module path (tuple) → file, for every .rs file under src."""
    out = {}
    for path in src.rglob("*.rs"):
        rel = path.relative_to(src).with_suffix("")
        parts = rel.parts
        if parts in (("lib",), ("main",)):
            parts = ()
        elif parts[-1] == "mod":
            parts = parts[:-1]
        out[tuple(parts)] = path
    return out


def split_paths(text):
    """Every path starting at `crate::`/`super::`/`self::`, groups `{a::X, b::{Y}}` split."""
    found = []

    def expand(prefix, body):
        depth, item, items = 0, "", []
        for ch in body:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                items.append(item.strip())
                item = ""
            else:
                item += ch
        items.append(item.strip())
        for it in items:
            if not it:
                continue
            m = re.match(r"([\w:]*?)(?:::)?\{(.*)\}$", it, re.S)
            if m:
                expand(prefix + ([m.group(1)] if m.group(1) else []), m.group(2))
            else:
                found.append("::".join(prefix + [it.split(" as ")[0].strip()]))

    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)*)::(\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}|\w+)", text):
        head, tail = m.group(1), m.group(2)
        if tail.startswith("{"):
            expand([head], tail[1:-1])
        else:
            found.append(head + "::" + tail)
    return found


def reexports(text):
    """`pub use child::…::{A, B}` / `pub(crate) use …` in a file → name → relative path."""
    out = {}
    for path in split_paths_from_uses(text):
        *mods, name = path.split("::")
        out[name] = mods
    return out


def split_paths_from_uses(text):
    paths = []
    for m in re.finditer(r"pub(?:\([\w ]+\))?\s+use\s+([^;]+);", text, re.S):
        body = m.group(1).strip()
        if body.startswith(("crate", "super", "self")):
            continue
        paths += [p.replace("self::", "", 1) for p in split_paths("self::" + body if "{" not in body.split("::")[0] else "self::" + body)]
    return paths


def resolve(files, exports, here_mod, path, depth=0):
    """The file defining `path` (a crate-relative or relative path), or None."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = (), parts[1:]
    else:
        base = here_mod
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    mod = base
    for i, part in enumerate(parts):
        if mod + (part,) in files:
            mod = mod + (part,)
            continue
        # `part` is an item of `mod`: defined there or re-exported from a child.
        target = exports.get(mod, {}).get(part)
        if target is not None and depth < 8:
            return resolve(files, exports, mod, "::".join(["self"] + target + [part]), depth + 1)
        return files.get(mod)
    return files.get(mod)


def graph(src):
    files = module_files(src)
    # Unit tests (`tests.rs`, or a `#[cfg(test)]` module at a file's end) may reach
    # anywhere in the crate: they are not what the module stands on.
    files = {m: p for m, p in files.items() if p.name != "tests.rs"}
    texts = {
        m: re.sub(r"//[^\n]*", "", p.read_text().split("\n#[cfg(test)]\nmod tests {")[0])
        for m, p in files.items()
    }
    exports = {m: reexports(t) for m, t in texts.items()}
    edges = {p: set() for p in files.values()}
    for mod, text in texts.items():
        here = files[mod]
        for path in split_paths(text):
            target = resolve(files, exports, mod, path)
            if target is not None and target != here:
                edges[here].add(target)
    return files, edges


def folder(src, path):
    """The folder a file's module lives in: its directory, or for `x.rs` beside a
    directory `x/` of its children, that directory (a module and its children are one)."""
    rel = path.relative_to(src)
    own = path.with_suffix("")
    if own.is_dir():
        return str(rel.with_suffix(""))
    return str(rel.parent) if len(rel.parts) > 1 else rel.stem


def circles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(100000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    roots = [pathlib.Path(a) for a in sys.argv[1:]] or [
        p for p in (pathlib.Path("src"), pathlib.Path("mcp-auth-proxy/src")) if p.exists()
    ]
    failed = False
    for src in roots:
        files, edges = graph(src)
        by_folder = {}
        for a, targets in edges.items():
            for b in targets:
                fa, fb = folder(src, a), folder(src, b)
                if fa != fb and not fb.startswith(fa + "/"):
                    by_folder.setdefault(fa, set()).add(fb)
        print(f"{src}: what each folder (or top-level file) imports from the others")
        for f in sorted({folder(src, p) for p in edges}):
            print(f"  {f:28} -> {', '.join(sorted(by_folder.get(f, ()))) or '-'}")
        for group in circles(edges):
            folders = sorted({folder(src, p) for p in group})
            if len(folders) > 1:
                failed = True
                print(f"  CIRCLE of {len(group)} files across {', '.join(folders)}:")
                for p in group:
                    inside = sorted(str(t.relative_to(src)) for t in edges[p] if t in group)
                    print(f"    {p.relative_to(src)} -> {', '.join(inside)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

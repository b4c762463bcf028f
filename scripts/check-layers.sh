#!/usr/bin/env bash
# The layer check (docs/ARCHITECTURE.md, "Rules"): fails with a readable message when an arrow
# of the architecture is broken.
#
#   (a) module imports inside the engine (crates/core/src): every `use crate::...` and
#       `crate::x::` path of a module's non-test code must name a module its row of the table
#       below allows; nothing in the engine names the C ABI or the bench crate.
#   (b) crate arrows, from `cargo metadata --no-deps` (the workspace and fuzz/): core depends
#       on nothing of ours, capi only on core, cdylib only on capi, dataset only on core;
#       nothing but cdylib, bench and fuzz depends on capi; nothing depends on bench.
#   (c) `cargo tree -p erlmcp-flow -e normal,build` holds no benchmark peer and no cbindgen:
#       `cargo add erlmcp-flow` builds the engine alone.
#
#   scripts/check-layers.sh          run by scripts/test.sh (stage `layers`)
#
# Test code is exempt from (a)'s table, not from its capi/bench rule: files declared under
# `#[cfg(test)]` or `#[cfg(loom)]` (tests.rs, model.rs, lincheck.rs, ...) and inline
# `#[cfg(test)] mod ... { }` blocks. Tests may build their inputs with a higher layer (the ring
# tests encode codec messages as payloads) and share helpers (ring::tests::TempDir) without
# that becoming an arrow of the engine.
#
# There is no way to exempt a break: a broken rule is fixed, or the table changes (reviewed
# with docs/ARCHITECTURE.md). Breaks that issue 10 names carry a hint saying what fixes them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

python3 - <<'PY'
import json
import os
import re
import subprocess
import sys

problems = []


def fail(msg):
    problems.append(msg)


# ---------------------------------------------------------------------------------------------
# (a) Module imports inside crates/core/src.
#
# A module may name only the modules of its row. The rows follow the layers, lowest first:
#   error; sync; checksum; priority | shm | ring | codec | queue, cache | vector, hnsw |
#   router, batch, state | net | raft, pbft, membership | replica, mesh | sched
# A row lists what the module needs or may plausibly need from below, not every lower module:
# queue, cache and hnsw take their Backoff from sync, never from each other; ring moves bytes
# and knows no codec (codec's ring adapters sit above it, in codec::ring); priority is a value
# type that the codec's envelopes and the task queue share; raft, pbft and membership are state machines without I/O, so they see
# codec but neither shm, ring nor net. Adding a module means adding its row here and in
# docs/ARCHITECTURE.md.
BASE = {"error", "sync", "checksum"}
ALLOWED = {
    "error": set(),
    "sync": {"error"},
    "checksum": {"error", "sync"},
    "priority": set(),
    "shm": BASE,
    "ring": BASE | {"shm"},
    "codec": BASE | {"priority", "shm", "ring"},
    "queue": BASE | {"priority"},
    "cache": BASE,
    "vector": BASE,
    "hnsw": BASE | {"vector"},
    "router": BASE | {"priority", "shm", "ring", "codec", "queue", "cache"},
    "batch": BASE | {"priority", "shm", "ring", "codec", "queue", "cache"},
    "state": BASE | {"priority", "shm", "codec"},
    # The subsystems to come (docs/ARCHITECTURE.md, "Where the coming subsystems live").
    "net": BASE | {"priority", "shm", "ring", "codec"},
    "raft": BASE | {"priority", "codec"},
    "pbft": BASE | {"priority", "codec"},
    "membership": BASE | {"priority", "codec"},
    # The Raft host loop: drives a raft::Node over a net::Transport (raft may not name net).
    "replica": BASE | {"priority", "shm", "ring", "codec", "net", "raft"},
    # The membership and PBFT host loops: drive them over a net::Transport (as replica does raft).
    "mesh": BASE | {"priority", "shm", "ring", "codec", "net", "pbft", "membership"},
    "sched": BASE | {"priority", "shm", "ring", "codec", "queue", "cache", "vector", "hnsw", "router",
                     "batch", "state", "net", "raft", "pbft", "membership", "replica", "mesh"},
}
# Items of the crate root that are not modules: the re-exports of `error`, and the version.
ROOT_ITEMS = {"Error": "error", "ErrorKind": "error", "Result": "error", "VERSION": None}
# Breaks of the rules that issue 10 names, and what fixes them (printed with the break).
# (Empty since issue 10 fixed ring -> codec and {cache, hnsw} -> queue::Backoff.)
KNOWN = {}
HINT = {}
FOREIGN = re.compile(r"\b(erlmcp_flow_capi|erlmcp_flow_bench|erlmcp_flow_cdylib)\b")
CORE = "crates/core/src"
TEST_CFG = re.compile(r"#\[cfg\((test|loom|all\((test|loom)\b[^\]]*)\)\]")


def strip_comments(text):
    """Drops // comments (doc comments too) and /* */ blocks; keeps line numbers."""
    out = []
    i = 0
    n = len(text)
    in_str = False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_str = False
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            in_str = True
            out.append(c)
            i += 1
        elif c == "'" and i + 2 < n and (text[i + 2] == "'" or text[i + 1] == "\\"):
            # A char literal ('"', '\'', '{'); lifetimes ('a) are left alone.
            j = text.find("'", i + 2 if text[i + 1] == "\\" else i + 1)
            j = i + 1 if j < 0 else j + 1
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def blank_test_blocks(code):
    """Blanks inline `#[cfg(test)] mod name { ... }` blocks; returns the code and the names of
    modules declared as files under a test or loom cfg (`#[cfg(test)] mod tests;`)."""
    test_files = set()
    out = list(code)
    for m in TEST_CFG.finditer(code):
        rest = code[m.end():]
        decl = re.match(r"\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*([;{])", rest)
        if not decl:
            continue
        if decl.group(2) == ";":
            test_files.add(decl.group(1))
            continue
        start = m.end() + decl.end() - 1  # the opening brace
        depth = 0
        for k in range(start, len(code)):
            if code[k] == "{":
                depth += 1
            elif code[k] == "}":
                depth -= 1
                if depth == 0:
                    for p in range(m.start(), k + 1):
                        if out[p] != "\n":
                            out[p] = " "
                    break
    return "".join(out), test_files


def split_top(s):
    parts, depth, cur = [], 0, ""
    for c in s:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def targets(code):
    """(line, first segment after `crate::`) for every crate path in the code."""
    found = []
    for m in re.finditer(r"(?<![\w$])crate\s*::\s*(\{|\w+)", code):
        line = code.count("\n", 0, m.start()) + 1
        if m.group(1) != "{":
            found.append((line, m.group(1)))
            continue
        depth, k = 0, m.start(1)
        while k < len(code):
            depth += {"{": 1, "}": -1}.get(code[k], 0)
            if depth == 0:
                break
            k += 1
        for part in split_top(code[m.start(1) + 1:k]):
            first = re.match(r"\w+", part)
            if first and first.group(0) != "self":
                found.append((line, first.group(0)))
    return found


def module_files():
    """(module, path, is_test) for every .rs file under crates/core/src but lib.rs."""
    files = []

    def walk(module, path, test):
        text = open(path, encoding="utf-8").read()
        code, test_children = blank_test_blocks(strip_comments(text))
        files.append((module, path, test, text, code))
        base = os.path.dirname(path)
        if os.path.basename(path) != "mod.rs":
            base = os.path.splitext(path)[0]
        for child in re.findall(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code):
            for cand in (os.path.join(base, child + ".rs"), os.path.join(base, child, "mod.rs")):
                if os.path.exists(cand):
                    walk(module, cand, test or child in test_children)
                    break

    lib_code, lib_tests = blank_test_blocks(strip_comments(open(f"{CORE}/lib.rs").read()))
    for module in re.findall(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", lib_code):
        for cand in (f"{CORE}/{module}.rs", f"{CORE}/{module}/mod.rs"):
            if os.path.exists(cand):
                walk(module, cand, module in lib_tests)
                break
    return files


files = module_files()
seen = {path for _, path, _, _, _ in files}
for dirpath, _, names in os.walk(CORE):
    for name in names:
        path = os.path.join(dirpath, name)
        if name.endswith(".rs") and path not in seen and path != f"{CORE}/lib.rs":
            fail(f"{path}: not reached from lib.rs by `mod` declarations; the check cannot "
                 "place it in a module (declare it, or remove it)")

for module, path, test, text, code in files:
    for i, line in enumerate(code.splitlines(), 1):
        if FOREIGN.search(line):
            fail(f"{path}:{i}: the engine names {FOREIGN.search(line).group(1)}; core depends "
                 "on nothing of ours (the C ABI wraps the engine, never the reverse)")
    if test:
        continue
    if module not in ALLOWED:
        fail(f"{path}: module `{module}` has no row in the layer table of "
             "scripts/check-layers.sh; add one (and to docs/ARCHITECTURE.md)")
        continue
    lines = text.splitlines()
    for line, first in targets(code):
        if first in ROOT_ITEMS:
            target = ROOT_ITEMS[first]
            if target is None:
                continue
        elif first in ALLOWED:
            target = first
        else:
            fail(f"{path}:{line}: crate::{first} is neither a module of the layer table nor a "
                 "known item of the crate root (ROOT_ITEMS in scripts/check-layers.sh)")
            continue
        if target == module or target in ALLOWED[module]:
            continue
        rule = KNOWN.get((module, target))
        src = lines[line - 1].strip() if line <= len(lines) else ""
        msg = (f"{path}:{line}: `{module}` imports `{target}`, which its layer does not allow "
               f"(allowed: {', '.join(sorted(ALLOWED[module])) or 'nothing'})\n      {src}")
        if rule:
            msg += f"\n      ({rule}: {HINT[rule]})"
        fail(msg)

# ---------------------------------------------------------------------------------------------
# (b) Crate arrows.
OURS = {
    "erlmcp-flow": "core",
    "erlmcp-flow-capi": "capi",
    "erlmcp-flow-cdylib": "cdylib",
    "erlmcp-flow-dataset": "dataset",
    "erlmcp-flow-bench": "bench",
    "erlmcp-flow-fuzz": "fuzz",
}
# What each crate may depend on, by dependency kind ("normal" covers build dependencies too).
# core's tests read the recall data set through dataset (a dev-dependency only: the library
# itself depends on nothing of ours).
CRATE_RULES = {
    "core": {"normal": set(), "dev": {"dataset"}},
    "capi": {"normal": {"core"}, "dev": {"core", "dataset"}},
    "cdylib": {"normal": {"capi"}, "dev": set()},
    "dataset": {"normal": {"core"}, "dev": {"core"}},
    "bench": {"normal": {"core", "capi", "dataset"}, "dev": {"core", "capi", "dataset"}},
    "fuzz": {"normal": {"core", "capi"}, "dev": {"core", "capi"}},
}


def metadata(*args):
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["packages"]


packages = metadata() + metadata("--manifest-path", "fuzz/Cargo.toml")
members = set()
for pkg in packages:
    who = OURS.get(pkg["name"])
    if who is None:
        fail(f"package {pkg['name']} ({pkg['manifest_path']}) has no row in CRATE_RULES of "
             "scripts/check-layers.sh; add one (and to docs/ARCHITECTURE.md)")
        continue
    members.add(who)
    for dep in pkg["dependencies"]:
        other = OURS.get(dep["name"])
        if other is None:
            if dep.get("path"):
                fail(f"{pkg['name']} depends on the unknown path crate {dep['name']}")
            continue
        kind = "dev" if dep["kind"] == "dev" else "normal"
        if other not in CRATE_RULES[who][kind]:
            allowed = ", ".join(sorted(CRATE_RULES[who][kind])) or "nothing of ours"
            fail(f"{pkg['name']} has a {dep['kind'] or 'normal'} dependency on {dep['name']}; "
                 f"its {kind} dependencies may be: {allowed}")
for need in set(OURS.values()) - members:
    fail(f"crate `{need}` not found by cargo metadata (renamed? update scripts/check-layers.sh)")

# ---------------------------------------------------------------------------------------------
# (c) The engine's dependency tree holds no benchmark peer and no header generator.
PEERS = {"serde_json", "crossbeam-channel", "crossbeam-queue", "concurrent-queue", "sonic-rs",
         "iceoryx2", "quick_cache", "moka", "hnsw_rs", "anndists", "criterion", "cbindgen"}
tree = subprocess.run(["cargo", "tree", "-p", "erlmcp-flow", "-e", "normal,build",
                       "--prefix", "none", "--format", "{p}"],
                      check=True, capture_output=True, text=True).stdout
names = {line.split()[0] for line in tree.splitlines() if line.strip()}
for name in sorted(names & PEERS):
    fail(f"`cargo tree -p erlmcp-flow -e normal,build` contains {name}: benchmark peers and "
         "cbindgen belong to crates/bench and crates/capi, never to the engine")

# ---------------------------------------------------------------------------------------------
for msg in problems:
    print(f"layer rule broken: {msg}")
if problems:
    print(f"check-layers: {len(problems)} broken rule(s); docs/ARCHITECTURE.md has the picture")
    sys.exit(1)
print(f"check-layers: ok ({len(files)} files of crates/core/src, {len(packages)} crates, "
      f"{len(names)} crates in the engine's tree)")
PY

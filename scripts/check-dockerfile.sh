#!/usr/bin/env bash
# Static check of the Dockerfile (there is no Docker engine on the project's
# machines). Parses the Dockerfile and asserts what a `docker build` + `docker run`
# would otherwise prove:
#   * multi-stage (>= 2 FROM); every `COPY --from=` names an earlier stage
#   * every COPY/ADD source from the build context exists in the repo, stays inside
#     it and is not excluded by .dockerignore
#   * the build stage runs `cargo build --release --locked` after copying every
#     compile-time input of the crate (Cargo.toml, Cargo.lock, src/, build.rs,
#     sqlx::migrate!() dirs, include_str!/include_bytes! files, .sqlx/ for query!)
#   * the ENTRYPOINT binary is the one copied from the build stage, built as
#     <WORKDIR>/target/release/<bin> with <bin> a binary of Cargo.toml
#   * the final stage: non-root USER (created in that stage), EXPOSE 8000,
#     HEALTHCHECK on /health at the exposed port, CMD's subcommand exists in src/
# Usage: scripts/check-dockerfile.sh [Dockerfile]   (run from anywhere)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${LXGATE_TESTBED_PYTHON:-python3}"
exec "$PY" - "$ROOT" "${1:-$ROOT/Dockerfile}" <<'PYEOF'
import glob
import json
import os
import posixpath
import re
import sys
import tomllib

root, dockerfile = sys.argv[1], sys.argv[2]
errors = []


def err(msg, line=None):
    errors.append(f"{os.path.relpath(dockerfile, root)}:{line}: {msg}" if line else msg)


# ------------------------------------------------------------------ parsing ---
def logical_lines(text):
    """Yield (first_line_no, instruction_text), joining `\\` continuations and
    dropping comment lines (also inside continuations, as Docker does)."""
    buf, start = [], None
    for no, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and (s.startswith("#") or not s):
            continue
        if start is None:
            start = no
        if s.endswith("\\"):
            buf.append(s[:-1].rstrip())
            continue
        buf.append(s)
        yield start, " ".join(x for x in buf if x)
        buf, start = [], None
    if buf:
        yield start, " ".join(buf)


def exec_or_shell(rest):
    """JSON exec form -> list; shell form -> str."""
    r = rest.strip()
    if r.startswith("["):
        try:
            v = json.loads(r)
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                return v
        except json.JSONDecodeError:
            pass
    return r


def split_flags(rest):
    toks = exec_or_shell(rest)
    if isinstance(toks, list):
        return {}, toks
    toks = toks.split()
    flags = {}
    while toks and toks[0].startswith("--"):
        k, _, v = toks.pop(0)[2:].partition("=")
        flags[k] = v
    # JSON form after flags: COPY --chown=x ["a", "b"]
    rest2 = " ".join(toks)
    if rest2.startswith("["):
        v = exec_or_shell(rest2)
        if isinstance(v, list):
            return flags, v
    return flags, toks


try:
    text = open(dockerfile, encoding="utf-8").read()
except OSError as e:
    sys.exit(f"check-dockerfile: cannot read {dockerfile}: {e}")

stages, global_args = [], {}
for line, instr in logical_lines(text):
    kw, _, rest = instr.partition(" ")
    kw = kw.upper()
    if "<<" in rest and kw in ("RUN", "COPY", "ADD"):
        err(f"{kw} heredoc: not supported by this checker, use a plain RUN", line)
    if kw == "FROM":
        toks = [t for t in rest.split() if not t.startswith("--")]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), toks[0])
        name = toks[2].lower() if len(toks) >= 3 and toks[1].lower() == "as" else None
        stages.append({"index": len(stages), "name": name, "image": image, "line": line, "instrs": []})
        continue
    if not stages:
        if kw == "ARG":
            k, _, v = rest.partition("=")
            global_args[k.strip()] = v.strip()
        elif kw not in ("ARG",):
            err(f"{kw} before the first FROM", line)
        continue
    stages[-1]["instrs"].append((line, kw, rest))

# ------------------------------------------------------------- .dockerignore ---
def load_dockerignore():
    path = os.path.join(root, ".dockerignore")
    rules = []
    if os.path.exists(path):
        for raw in open(path, encoding="utf-8"):
            p = raw.strip()
            if not p or p.startswith("#"):
                continue
            neg = p.startswith("!")
            p = posixpath.normpath(p.lstrip("!").lstrip("/"))
            rx = ""
            i = 0
            while i < len(p):
                if p.startswith("**", i):
                    rx += ".*"
                    i += 2
                    if p.startswith("/", i):
                        rx = rx[:-2] + "(?:.*/)?"
                        i += 1
                elif p[i] == "*":
                    rx += "[^/]*"
                    i += 1
                elif p[i] == "?":
                    rx += "[^/]"
                    i += 1
                else:
                    rx += re.escape(p[i])
                    i += 1
            rules.append((neg, re.compile(rx + r"\Z")))
    return rules


IGNORE = load_dockerignore()


def ignored(rel):
    """Docker semantics: last matching rule wins; a rule matching a parent
    directory excludes everything below it."""
    parts = rel.split("/")
    res = False
    for neg, rx in IGNORE:
        if any(rx.match("/".join(parts[: i + 1])) for i in range(len(parts))):
            res = not neg
    return res


# --------------------------------------------------------- generic checks ---
if len(stages) < 2:
    err(f"expected a multi-stage build (>= 2 FROM), found {len(stages)}")
if not stages:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)

stage_names = {}
for st in stages:
    if st["name"]:
        if st["name"] in stage_names:
            err(f"duplicate stage name {st['name']!r}", st["line"])
        stage_names[st["name"]] = st["index"]


def resolve_stage(ref, cur):
    ref_l = ref.lower()
    if ref_l in stage_names and stage_names[ref_l] < cur:
        return stages[stage_names[ref_l]]
    if ref.isdigit() and int(ref) < cur:
        return stages[int(ref)]
    return None


for st in stages:
    workdir = "/"
    st["copies"] = []  # (line, from_stage|None, [sources], dest_abs)
    for line, kw, rest in st["instrs"]:
        if kw == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, rest.strip()))
        if kw not in ("COPY", "ADD"):
            continue
        flags, args = split_flags(rest)
        if len(args) < 2:
            err(f"{kw} needs a source and a destination", line)
            continue
        *srcs, dest = args
        dest_abs = posixpath.join(workdir, dest)
        if dest.endswith("/") or dest in (".", "./"):
            dest_abs = dest_abs.rstrip("/") + "/"
        frm = flags.get("from")
        if frm is not None:
            src_stage = resolve_stage(frm, st["index"])
            if src_stage is None:
                err(f"COPY --from={frm}: no earlier stage of that name/index", line)
            st["copies"].append((line, src_stage, srcs, dest_abs))
            continue
        for s in srcs:
            if re.match(r"^[a-z]+://", s) or "$" in s:
                err(f"{kw} {s}: remote or variable sources are not checked; use a plain path", line)
                continue
            rel = posixpath.normpath(s.lstrip("/"))
            if rel.startswith(".."):
                err(f"{kw} {s}: leaves the build context", line)
                continue
            matches = glob.glob(os.path.join(root, rel)) if rel != "." else [root]
            if not matches:
                err(f"{kw} {s}: not found in the build context ({root})", line)
                continue
            for m in matches:
                r = os.path.relpath(m, root).replace(os.sep, "/")
                if r != "." and ignored(r):
                    err(f"{kw} {s}: {r} is excluded by .dockerignore", line)
            if kw == "ADD":
                err(f"ADD {s}: use COPY for local files", line)
        st["copies"].append((line, None, srcs, dest_abs))
    st["workdir_end"] = workdir

final = stages[-1]


def final_instrs(kw):
    return [(l, r) for l, k, r in final["instrs"] if k == kw]


# ---------------------------------------------------------- final stage ---
users = final_instrs("USER")
if not users:
    err("final stage has no USER directive (runs as root)")
else:
    uline, user = users[-1]
    uname = user.strip().split(":")[0]
    if uname in ("", "root", "0"):
        err(f"final stage USER is root ({user.strip()})", uline)
    elif not uname.isdigit():
        created = any(
            k == "RUN" and re.search(rf"\b(useradd|adduser)\b[^;&|]*\b{re.escape(uname)}\b", r)
            for _, k, r in final["instrs"]
        )
        if not created:
            err(f"USER {uname}: no useradd/adduser creates it in the final stage", uline)

exposed = set()
for l, r in final_instrs("EXPOSE"):
    for t in r.split():
        exposed.add(t.split("/")[0])
if "8000" not in exposed:
    err(f"final stage must EXPOSE 8000 (found {sorted(exposed) or 'none'})")

env = {}
for l, r in final_instrs("ENV"):
    for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', r):
        env[k] = v.strip('"')
if env.get("APP_PORT", "8000") != "8000":
    err(f"ENV APP_PORT={env['APP_PORT']} but the image exposes 8000")

hcs = final_instrs("HEALTHCHECK")
if not hcs:
    err("final stage has no HEALTHCHECK")
else:
    hline, hc = hcs[-1]
    if hc.strip().upper() == "NONE":
        err("HEALTHCHECK NONE", hline)
    m = re.search(r"https?://(?:127\.0\.0\.1|localhost|\[::1\])(?::([^/\s\"']+))?(/[^\s\"']*)", hc)
    if not m or m.group(2) != "/health":
        err("HEALTHCHECK must request http://127.0.0.1:<port>/health", hline)
    else:
        port = m.group(1) or "80"
        pm = re.fullmatch(r"\$\{?APP_PORT(?::-(\d+))?\}?", port)
        if pm:
            port = env.get("APP_PORT") or pm.group(1) or ""
        if port not in exposed:
            err(f"HEALTHCHECK port {port or '?'} is not an EXPOSEd port", hline)

# ------------------------------------------------ Cargo / binary / entrypoint ---
try:
    manifest = tomllib.load(open(os.path.join(root, "Cargo.toml"), "rb"))
except (OSError, tomllib.TOMLDecodeError) as e:
    err(f"Cargo.toml: {e}")
    manifest = {}
pkg = manifest.get("package", {})
bins = {b.get("name") for b in manifest.get("bin", [])} or {pkg.get("name")}
if not os.path.exists(os.path.join(root, "Cargo.lock")):
    err("Cargo.lock is missing (the image builds with --locked)")

eps = final_instrs("ENTRYPOINT")
entry = None
if not eps:
    err("final stage has no ENTRYPOINT")
else:
    eline, ep = eps[-1]
    form = exec_or_shell(ep)
    if not isinstance(form, list) or not form:
        err("ENTRYPOINT must use the JSON exec form", eline)
    else:
        entry = form[0]

if entry:
    copied = None
    for line, src_stage, srcs, dest in final["copies"]:
        if src_stage is None:
            continue
        for s in srcs:
            target = dest + posixpath.basename(s) if dest.endswith("/") else dest
            if posixpath.normpath(target) == posixpath.normpath(entry):
                copied = (line, src_stage, s)
    if not copied:
        err(f"ENTRYPOINT {entry}: not copied into the final stage from a build stage")
    else:
        line, bstage, src = copied
        # Where the build stage runs cargo build --release, and what it produces.
        builds = []
        wd = "/"
        for l, k, r in bstage["instrs"]:
            if k == "WORKDIR":
                wd = posixpath.normpath(posixpath.join(wd, r.strip()))
            if k == "RUN" and re.search(r"\bcargo\s+build\b[^;&|]*--release", r):
                builds.append((l, wd, r))
        if not builds:
            err(f"stage {bstage['name'] or bstage['index']} never runs `cargo build --release`", line)
        else:
            bl, bwd, brun = builds[-1]
            if "--locked" not in brun:
                err("cargo build --release must use --locked", bl)
            expected = {posixpath.join(bwd, "target/release", b) for b in bins if b}
            if posixpath.normpath(posixpath.join(bwd, src)) not in expected:
                err(f"COPY --from copies {src}, but the build produces {sorted(expected)}", line)
            if posixpath.basename(entry) not in bins:
                err(f"ENTRYPOINT {entry}: Cargo.toml has no binary named {posixpath.basename(entry)}")

            # Compile-time inputs of the crate must be copied before the last build.
            available = set()  # context-relative paths as they sit under bwd
            for cl, cstage, csrcs, cdest in bstage["copies"]:
                if cstage is not None or cl > bl:
                    continue
                for s in csrcs:
                    rel = posixpath.normpath(s.lstrip("/"))
                    if cdest.endswith("/"):
                        tgt = cdest + posixpath.basename(rel.rstrip("/"))
                    else:
                        tgt = cdest
                    tgt = posixpath.normpath(tgt)
                    want = posixpath.normpath(posixpath.join(bwd, rel))
                    if tgt != want:
                        err(f"COPY {s} -> {tgt}: the build expects the repo layout ({want})", cl)
                    available.add(rel)

            def covered(rel):
                rel = posixpath.normpath(rel)
                return any(rel == a or rel.startswith(a + "/") for a in available)

            needed = {"Cargo.toml": "manifest", "Cargo.lock": "--locked"}
            lib = manifest.get("lib", {}).get("path", "src/lib.rs")
            if os.path.exists(os.path.join(root, lib)):
                needed[lib] = "[lib]"
            for b in manifest.get("bin", []):
                if b.get("path"):
                    needed[b["path"]] = f"[[bin]] {b.get('name')}"
            needed["src/main.rs"] = "binary"
            build_rs = pkg.get("build", "build.rs" if os.path.exists(os.path.join(root, "build.rs")) else None)
            if build_rs:
                needed[build_rs] = "build script"
            uses_query_macros = False
            for dirpath, _, files in os.walk(os.path.join(root, "src")):
                for f in files:
                    if not f.endswith(".rs"):
                        continue
                    p = os.path.join(dirpath, f)
                    rs = os.path.relpath(p, root).replace(os.sep, "/")
                    code = open(p, encoding="utf-8", errors="replace").read()
                    for m in re.finditer(r'\binclude_(?:str|bytes)!\s*\(\s*"([^"]+)"', code):
                        needed[posixpath.normpath(posixpath.join(posixpath.dirname(rs), m.group(1)))] = rs
                    for m in re.finditer(r'\binclude_(?:str|bytes)!\s*\(\s*concat!\s*\(\s*env!\s*\(\s*"CARGO_MANIFEST_DIR"\s*\)\s*,\s*"/?([^"]+)"', code):
                        needed[posixpath.normpath(m.group(1))] = rs
                    for m in re.finditer(r'\bmigrate!\s*\(\s*(?:"([^"]*)")?\s*\)', code):
                        needed[posixpath.normpath(m.group(1) or "migrations")] = rs
                    if re.search(r"\bquery(?:_as|_scalar|_file|_file_as)?(?:_unchecked)?!\s*\(", code):
                        uses_query_macros = True
            for rel, why in sorted(needed.items()):
                if not os.path.exists(os.path.join(root, rel)):
                    err(f"{rel} (needed by {why}) does not exist in the repo")
                elif not covered(rel):
                    err(f"{rel} (needed by {why}) is not copied into the build stage before `cargo build` (line {bl})")
            if uses_query_macros:
                if not covered(".sqlx"):
                    err("src uses sqlx query! macros: copy .sqlx/ into the build stage")
                if not re.search(r"SQLX_OFFLINE", text):
                    err("src uses sqlx query! macros: set SQLX_OFFLINE=true for the build")

# CMD's first word must be a subcommand the binary knows.
cmds = final_instrs("CMD")
if cmds:
    form = exec_or_shell(cmds[-1][1])
    sub = form[0] if isinstance(form, list) and form else None
    if sub and not sub.startswith("-"):
        variant = "".join(w.capitalize() for w in re.split(r"[-_]", sub))
        found = False
        for dirpath, _, files in os.walk(os.path.join(root, "src")):
            for f in files:
                if f.endswith(".rs"):
                    code = open(os.path.join(dirpath, f), encoding="utf-8", errors="replace").read()
                    if re.search(rf"\b{variant}\b", code) or f'"{sub}"' in code:
                        found = True
        if not found:
            err(f"CMD {sub}: no subcommand {variant} / \"{sub}\" found in src/", cmds[-1][0])

if errors:
    print("check-dockerfile: FAILED", file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)
    sys.exit(1)
print(f"check-dockerfile: ok ({len(stages)} stages, entrypoint {entry}, "
      f"user {users[-1][1].strip()}, exposes {', '.join(sorted(exposed))})")
PYEOF

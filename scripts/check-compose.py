#!/usr/bin/env python3
"""Validate Compose files offline against the official Compose Specification schema.

There is no Docker engine (nor `docker compose`) on the project's machines, so this
stands in for `docker compose config`:

* the file is parsed as YAML and interpolated like Compose does (`${VAR}`,
  `${VAR:-default}`, `${VAR:?error}`, `$$`), with variables unset unless exported;
* the result is validated against compose-spec.json, the schema of the
  compose-spec/compose-spec repository as vendored in the `check-jsonschema` PyPI
  package (installed into target/testbed-venv by scripts/testbed.sh);
* references the schema cannot express are checked: named volumes / networks /
  secrets / configs declared, depends_on targets exist, build contexts and
  Dockerfiles exist, required env_files exist;
* for the `lxgate` service: the health check hits /health on the container port.

--self-test also feeds deliberately broken variants of the first file to the
validator and fails unless every one is rejected (guards against a vacuous check).

Usage: check-compose.py [--self-test] [--schema compose-spec.json] [FILE ...]
"""
import argparse
import copy
import importlib.metadata
import importlib.resources
import json
import os
import re
import sys

import jsonschema
import yaml


def load_schema(path):
    if path:
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    res = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    version = importlib.metadata.version("check-jsonschema")
    return json.loads(res.read_text(encoding="utf-8")), f"compose-spec.json from check-jsonschema {version}"


_VAR = re.compile(r"\$(?:\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env, where, errors):
    """Compose-style variable substitution on every string of the document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}", errors) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        if m.group(2):
            return env.get(m.group(2), "")
        expr = m.group(1)
        mm = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", expr, re.S)
        if not mm:
            errors.append(f"{where}: invalid interpolation ${{{expr}}}")
            return ""
        name, op, arg = mm.group(1), mm.group(2), mm.group(3) or ""
        val = env.get(name)
        unset_or_empty = val is None or (op and op.startswith(":") and val == "")
        if op in (":-", "-"):
            return arg if unset_or_empty else val
        if op in (":?", "?"):
            if unset_or_empty:
                errors.append(f"{where}: required variable {name} is missing: {arg}")
                return ""
            return val
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return val or ""

    return _VAR.sub(sub, value)


def schema_errors(validator, doc):
    out = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = "/".join(map(str, e.absolute_path)) or "(root)"
        out.append(f"{path}: {e.message}")
    return out


def reference_errors(doc, base_dir):
    errs = []
    services = doc.get("services") or {}
    top = {k: set((doc.get(k) or {}).keys()) for k in ("volumes", "networks", "secrets", "configs")}
    for name, svc in services.items():
        svc = svc or {}
        for v in svc.get("volumes") or []:
            src = v.get("source") if isinstance(v, dict) else (v.split(":")[0] if ":" in v else None)
            vtype = v.get("type", "volume") if isinstance(v, dict) else None
            if not src or src.startswith((".", "/", "~", "$")) or vtype in ("bind", "tmpfs"):
                continue
            if src not in top["volumes"]:
                errs.append(f"services/{name}/volumes: named volume {src!r} is not declared under top-level volumes")
        nets = svc.get("networks") or []
        for n in (nets.keys() if isinstance(nets, dict) else nets):
            if n != "default" and n not in top["networks"]:
                errs.append(f"services/{name}/networks: {n!r} is not declared under top-level networks")
        for kind in ("secrets", "configs"):
            for s in svc.get(kind) or []:
                ref = s.get("source") if isinstance(s, dict) else s
                if ref not in top[kind]:
                    errs.append(f"services/{name}/{kind}: {ref!r} is not declared under top-level {kind}")
        deps = svc.get("depends_on") or []
        for d in (deps.keys() if isinstance(deps, dict) else deps):
            if d not in services:
                errs.append(f"services/{name}/depends_on: no service {d!r}")
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            if not re.match(r"^[a-z]+://|^git@", ctx):
                ctx_dir = os.path.normpath(os.path.join(base_dir, ctx))
                dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
                if not os.path.isdir(ctx_dir):
                    errs.append(f"services/{name}/build: context {ctx!r} is not a directory")
                elif not os.path.isfile(os.path.join(ctx_dir, dockerfile)):
                    errs.append(f"services/{name}/build: {dockerfile} not found in {ctx!r}")
        env_files = svc.get("env_file") or []
        if isinstance(env_files, str):
            env_files = [env_files]
        for ef in env_files:
            path, required = (ef, True) if isinstance(ef, str) else (ef.get("path"), ef.get("required", True))
            if required and not os.path.isfile(os.path.join(base_dir, path)):
                errs.append(f"services/{name}/env_file: {path} is required but missing (use required: false)")
    if "lxgate" in services:
        svc = services["lxgate"] or {}
        test = (svc.get("healthcheck") or {}).get("test")
        test_s = " ".join(test) if isinstance(test, list) else str(test or "")
        ports = []
        for p in svc.get("ports") or []:
            ports.append(str(p.get("target")) if isinstance(p, dict) else str(p).split(":")[-1].split("/")[0])
        m = re.search(r"https?://(?:127\.0\.0\.1|localhost)(?::(\d+))?/health\b", test_s)
        if not m:
            errs.append("services/lxgate/healthcheck: must request http://127.0.0.1:<port>/health")
        elif ports and (m.group(1) or "80") not in ports:
            errs.append(f"services/lxgate/healthcheck: port {m.group(1)} is not the published container port {ports}")
    return errs


BROKEN_VARIANTS = [
    ("unknown top-level key", lambda d: d.__setitem__("servics", d.get("services"))),
    ("unknown service key", lambda d: first_service(d).__setitem__("restart_policy", "always")),
    ("ports not a list", lambda d: first_service(d).__setitem__("ports", 8000)),
    ("healthcheck.test a number", lambda d: first_service(d).setdefault("healthcheck", {}).__setitem__("test", 42)),
    ("restart a number", lambda d: first_service(d).__setitem__("restart", 5)),
    ("services not a mapping", lambda d: d.__setitem__("services", ["lxgate"])),
    ("volume entry a number", lambda d: first_service(d).__setitem__("volumes", [42])),
]


def first_service(d):
    return next(iter(d["services"].values()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", default=["docker-compose.yml"])
    ap.add_argument("--schema", help="compose-spec.json to use instead of the vendored one")
    ap.add_argument("--self-test", action="store_true", help="prove broken variants are rejected")
    args = ap.parse_args()

    schema, schema_src = load_schema(args.schema)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    failed = False
    first_doc = None
    for path in args.files:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            print(f"check-compose: {path}: {e}", file=sys.stderr)
            failed = True
            continue
        if not isinstance(raw, dict):
            print(f"check-compose: {path}: not a YAML mapping", file=sys.stderr)
            failed = True
            continue
        errs = []
        # Compose reads .env next to the file for interpolation; validate with a clean
        # environment so the result does not depend on the developer's .env or shell.
        doc = interpolate(raw, {}, "", errs)
        errs += schema_errors(validator, doc)
        if not errs:
            errs += reference_errors(doc, os.path.dirname(os.path.abspath(path)))
        if errs:
            failed = True
            print(f"check-compose: {path}: INVALID", file=sys.stderr)
            for e in errs:
                print(f"  {e}", file=sys.stderr)
        else:
            print(f"check-compose: {path} ok ({schema_src}, {len(doc.get('services') or {})} services)")
        if first_doc is None:
            first_doc = doc

    if args.self_test and first_doc is not None and first_doc.get("services"):
        missed = []
        for label, mutate in BROKEN_VARIANTS:
            broken = copy.deepcopy(first_doc)
            mutate(broken)
            if not schema_errors(validator, broken):
                missed.append(label)
        if missed:
            failed = True
            print(f"check-compose: self-test FAILED, the schema accepted: {', '.join(missed)}", file=sys.stderr)
        else:
            print(f"check-compose: self-test ok ({len(BROKEN_VARIANTS)} broken variants rejected)")

    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

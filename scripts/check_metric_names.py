#!/usr/bin/env python3
"""Checks that alert rules, their tests and the Grafana dashboard use only metric
names walshift exports.

    python3 scripts/check_metric_names.py [--root DIR] [--verbose]

The exported names are the `ALL` list of src/telemetry/metrics.rs (each entry a
`pub const NAME: &str = "walshift_..."` of that file, or a string literal). The
names used are every identifier starting with `walshift_` in

  - config/alerts.yml: the `expr` of each rule,
  - config/alerts.test.yml: each `series` of input_series and each `expr` of
    promql_expr_test,
  - config/grafana/walshift.json: each target's `expr` and each template
    variable's query,

outside quoted strings (label values such as a slot name are not metric names).
`_bucket`, `_sum` and `_count` are stripped from the names of histograms (the
constants whose doc comment says "histogram", or that `describe_histogram!` or
`histogram!` use). Exits 0 when every name is known, 1 listing the unknown names
and where they are used, 2 when a file is missing or yields no expression.
Standard library only.
"""

import argparse
import json
import re
import sys
from pathlib import Path

METRICS_RS = "src/telemetry/metrics.rs"
ALERTS = "config/alerts.yml"
ALERT_TESTS = "config/alerts.test.yml"
DASHBOARD = "config/grafana/walshift.json"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# A PromQL identifier (metric names may contain colons); only those starting with
# `walshift_` are checked.
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
CONST = re.compile(r'^\s*pub\s+const\s+([A-Z][A-Z0-9_]*)\s*:\s*&str\s*=\s*"([^"]*)"\s*;', re.M)
ALL_ARRAY = re.compile(r"pub\s+const\s+ALL\s*:\s*&\[\s*&str\s*\]\s*=\s*&\[(.*?)\];", re.S)
HISTOGRAM_USE = re.compile(r"(?:describe_histogram|histogram)!\s*\(\s*([A-Z][A-Z0-9_]*)")


class Failure(Exception):
    """A file that cannot be read or understood (exit 2)."""


def exported_names(text):
    """Returns (names in ALL, histogram names) parsed from metrics.rs."""
    consts = dict(CONST.findall(text))
    match = ALL_ARRAY.search(text)
    if not match:
        raise Failure(f"{METRICS_RS}: no `pub const ALL: &[&str] = &[...];`")
    body = re.sub(r"//[^\n]*", "", match.group(1))
    names = set()
    for item in (i.strip() for i in body.split(",")):
        if not item:
            continue
        if item.startswith('"') and item.endswith('"'):
            names.add(item[1:-1])
        elif item in consts:
            names.add(consts[item])
        else:
            raise Failure(f"{METRICS_RS}: ALL lists {item}, which is not a `pub const &str` here")
    if not names:
        raise Failure(f"{METRICS_RS}: ALL is empty")
    histogram_consts = set(HISTOGRAM_USE.findall(text))
    # A constant whose `///` doc comment mentions a histogram.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = CONST.match(line)
        if not m:
            continue
        j = i - 1
        doc = []
        while j >= 0 and lines[j].strip().startswith("///"):
            doc.append(lines[j])
            j -= 1
        if "histogram" in " ".join(doc).lower():
            histogram_consts.add(m.group(1))
    histograms = {consts[c] for c in histogram_consts if c in consts}
    return names, histograms


def strip_strings(promql):
    """Removes quoted strings (label values, regexes) from a PromQL expression."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', promql)


def names_in(promql):
    """Every identifier starting with `walshift_` in a PromQL expression or series."""
    return [n for n in IDENT.findall(strip_strings(promql)) if n.startswith("walshift_")]


def unquote_yaml_scalar(value):
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return bytes(value[1:-1], "utf-8").decode("unicode_escape")
    return value


def yaml_values(text, keys):
    """Values of the mapping keys `keys` in a YAML file: inline scalars (plain or
    quoted, continued on more indented lines) and block scalars (`|`, `>` and their
    variants). Enough for Prometheus rule and test files; no YAML library needed.
    Returns (line number, value) pairs."""
    lines = text.splitlines()
    key_re = re.compile(r"^(\s*(?:-\s+)*)(" + "|".join(map(re.escape, keys)) + r")\s*:(?:\s+(.*))?$")
    out = []
    for i, line in enumerate(lines):
        m = key_re.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        inline = (m.group(3) or "").strip()
        if inline.startswith("#"):
            inline = ""
        block = []
        for nxt in lines[i + 1 :]:
            if nxt.strip() == "":
                block.append("")
                continue
            if len(nxt) - len(nxt.lstrip()) <= indent:
                break
            block.append(nxt.strip())
        if inline[:1] in ("|", ">"):
            value = "\n".join(block)
        elif inline[:1] in ("'", '"') and inline[-1:] == inline[:1] and len(inline) > 1:
            value = unquote_yaml_scalar(inline)
        else:
            # Plain scalar, possibly continued; drop comments.
            rest = [b for b in block if b and not b.startswith("#")]
            value = " ".join([re.sub(r"\s+#.*$", "", inline)] + rest)
        out.append((i + 1, value))
    return out


def dashboard_exprs(node, path="$"):
    """Every target `expr` and template variable query of a Grafana dashboard."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            if key == "expr" and isinstance(value, str):
                found.append((here, value))
            elif key in ("query", "definition") and "templating" in path:
                if isinstance(value, str):
                    found.append((here, value))
                elif isinstance(value, dict) and isinstance(value.get("query"), str):
                    found.append((here + ".query", value["query"]))
            else:
                found.extend(dashboard_exprs(value, here))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(dashboard_exprs(value, f"{path}[{i}]"))
    return found


def read(root, rel):
    path = root / rel
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise Failure(f"{rel}: {e.strerror}") from e


def uses(root):
    """(file:location, expression) for every expression checked."""
    found = []
    for rel, keys in ((ALERTS, ("expr",)), (ALERT_TESTS, ("series", "expr"))):
        values = yaml_values(read(root, rel), keys)
        if not values:
            raise Failure(f"{rel}: no {' or '.join(keys)} found")
        found.extend((f"{rel}:{line}", value) for line, value in values)
    try:
        dashboard = json.loads(read(root, DASHBOARD))
    except json.JSONDecodeError as e:
        raise Failure(f"{DASHBOARD}: not JSON: {e}") from e
    exprs = dashboard_exprs(dashboard)
    if not exprs:
        raise Failure(f"{DASHBOARD}: no target expr found")
    found.extend((f"{DASHBOARD} {where}", value) for where, value in exprs)
    return found


def check(root, verbose=False):
    names, histograms = exported_names(read(root, METRICS_RS))
    unknown = {}
    used = set()
    for where, expr in uses(root):
        for name in names_in(expr):
            base = name
            if name not in names:
                for suffix in HISTOGRAM_SUFFIXES:
                    if name.endswith(suffix) and name[: -len(suffix)] in histograms:
                        base = name[: -len(suffix)]
                        break
            if base in names:
                used.add(base)
            else:
                unknown.setdefault(name, []).append(where)
    if verbose:
        print(f"{len(names)} names exported, {len(used)} used:")
        for name in sorted(used):
            print(f"  {name}")
        for name in sorted(names - used):
            print(f"  (unused) {name}")
    return unknown


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the checkout (default: this script's ..)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="list the names used")
    args = parser.parse_args(argv)
    try:
        unknown = check(args.root, args.verbose)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if unknown:
        print(
            f"error: metric names not exported by walshift ({METRICS_RS} ALL):",
            file=sys.stderr,
        )
        for name in sorted(unknown):
            places = sorted(set(unknown[name]))
            print(f"  {name}: {', '.join(places)}", file=sys.stderr)
        return 1
    print(f"ok: every walshift_* metric in {ALERTS}, {ALERT_TESTS} and {DASHBOARD} is exported")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

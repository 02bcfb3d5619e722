"""Results of a benchmark run: medians, ratios to haproxy, the JSON schema, the README table.

Pure functions over the JSON document (no processes, no clocks), so they are tested directly
and `python -m benchmarks.run --report-only FILE` can regenerate the README from any
committed result.

Document (`SCHEMA` = "pymesh-bench/1"), every latency in µs, every CPU figure in µs/request:

    {"schema", "commit", "date", "python", "loop", "machine", "pinning", "settings", "tools",
     "notes": [str],
     "rows": [{"name", "label", "group", "baseline", "status": "ok"|"skipped"|"failed",
               "note", "runs": [{"saturation": M, "fixed_rate": M, "discarded": [M...]}],
               "median": {MEDIAN_KEYS...} | null,
               "ratios": {"baseline", "rps", "cpu_fixed", "cpu_sat", "p99",
                          "fixed_p50", "fixed_p99"} | null,
               "reference": str | null,                        (optional)
               "added": {"reference", "p50_us", "p99_us"} | null,   (optional)
               "per_process": {PROCESS: {"cpu_us_per_req_fixed",
                                         "cpu_us_per_req_sat"}} | null}]}   (optional)
    M = {"requests", "duration_s", "rps", "latency_avg_us", "latency_max_us",
         "percentiles_us": {"50", "75", "90", "99"}, "errors", "proxy_cpu_s", "cpu_us_per_req",
         "interference": {"settle_wait_s", "busy_before", "load_core_foreign",
                          "proxy_core_foreign"},
         "proxy_cpu_s_by_process": {PROCESS: s},     (optional: rows with several proxies)
         "load_helpers_cpu_s": {PROCESS: s}}         (optional: a TLS client on the load core)
    ("discarded": measurements repeated because other programs were busy, each with its
    "kind"; "interference" shares are of one core, 0.2 = 20 %. "added": the row's fixed-rate
    p50/p99 minus those of its "reference" row (direct), i.e. the latency a sidecar pair adds
    at 1,000 req/s; "per_process": the median CPU µs/request of each proxy of a pair. The
    keys marked optional are absent from older results.)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GOALS",
    "MEDIAN_KEYS",
    "README_BEGIN",
    "README_END",
    "SCHEMA",
    "Check",
    "Goal",
    "added_latency",
    "compute_ratios",
    "fmt_added",
    "fmt_latency",
    "interference_notes",
    "interference_of",
    "median_of_runs",
    "per_process_medians",
    "render_goals",
    "render_pairs_table",
    "render_report",
    "render_results_table",
    "replace_between_markers",
    "summarize_note",
    "summarize_rows",
    "validate_result",
]

SCHEMA = "pymesh-bench/1"
X = "\u00d7"  # the multiplication sign of ratios (ruff flags it as ambiguous in literals)
README_BEGIN = "<!-- results:begin -->"
README_END = "<!-- results:end -->"

Json = dict[str, Any]

# median key -> (measurement, how to read it from a measurement dict)
MEDIAN_KEYS: dict[str, tuple[str, Callable[[Mapping[str, Any]], float | None]]] = {
    "rps": ("saturation", lambda m: m["rps"]),
    "p50_us": ("saturation", lambda m: m["percentiles_us"]["50"]),
    "p99_us": ("saturation", lambda m: m["percentiles_us"]["99"]),
    "cpu_us_per_req_sat": ("saturation", lambda m: m["cpu_us_per_req"]),
    "fixed_rps": ("fixed_rate", lambda m: m["rps"]),
    "fixed_p50_us": ("fixed_rate", lambda m: m["percentiles_us"]["50"]),
    "fixed_p99_us": ("fixed_rate", lambda m: m["percentiles_us"]["99"]),
    "cpu_us_per_req_fixed": ("fixed_rate", lambda m: m["cpu_us_per_req"]),
}

_MEASUREMENT_KEYS = (
    "requests",
    "duration_s",
    "rps",
    "latency_avg_us",
    "latency_max_us",
    "percentiles_us",
    "errors",
    "proxy_cpu_s",
    "cpu_us_per_req",
)
_TOP_KEYS = (
    "schema",
    "commit",
    "date",
    "python",
    "loop",
    "machine",
    "pinning",
    "settings",
    "tools",
    "notes",
    "rows",
)
_ROW_KEYS = ("name", "label", "group", "baseline", "status", "note", "runs", "median", "ratios")
_RATIO_KEYS = ("baseline", "rps", "cpu_fixed", "cpu_sat", "p99")
_STATUSES = ("ok", "skipped", "failed")


def median_of_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Median of each MEDIAN_KEYS figure over the runs (None where no run has the figure)."""
    out: dict[str, float | None] = {}
    for key, (measurement, read) in MEDIAN_KEYS.items():
        values = [v for run in runs if (v := read(run[measurement])) is not None]
        out[key] = statistics.median(values) if values else None
    out["errors"] = float(
        sum(run[m]["errors"] for run in runs for m in ("saturation", "fixed_rate"))
    )
    return out


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def compute_ratios(rows: Sequence[Mapping[str, Any]]) -> dict[str, Json | None]:
    """Ratios of each ok row to the ok baseline row (haproxy) of its group, by row name.

    req/s, CPU µs/request (fixed rate and saturation) and p99 each divide row by baseline;
    rows of a group without a baseline (direct) and rows that did not run get None.
    """
    baselines: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if row["baseline"] and row["status"] == "ok" and row["median"] is not None:
            baselines[row["group"]] = row
    out: dict[str, Json | None] = {}
    for row in rows:
        base = baselines.get(row["group"])
        med = row["median"]
        if base is None or row["status"] != "ok" or med is None:
            out[row["name"]] = None
            continue
        bmed = base["median"]
        out[row["name"]] = {
            "baseline": base["name"],
            "rps": _ratio(med["rps"], bmed["rps"]),
            "cpu_fixed": _ratio(med["cpu_us_per_req_fixed"], bmed["cpu_us_per_req_fixed"]),
            "cpu_sat": _ratio(med["cpu_us_per_req_sat"], bmed["cpu_us_per_req_sat"]),
            "p99": _ratio(med["p99_us"], bmed["p99_us"]),
            "fixed_p50": _ratio(med.get("fixed_p50_us"), bmed.get("fixed_p50_us")),
            "fixed_p99": _ratio(med.get("fixed_p99_us"), bmed.get("fixed_p99_us")),
        }
    return out


def per_process_medians(runs: Sequence[Mapping[str, Any]]) -> dict[str, Json] | None:
    """Median CPU µs/request of each proxy process of a row with several (a sidecar pair),
    at the fixed rate and at saturation; None when the runs have no per-process figures."""
    samples: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for measurement, key in (
            ("fixed_rate", "cpu_us_per_req_fixed"),
            ("saturation", "cpu_us_per_req_sat"),
        ):
            m = run[measurement]
            by_process = m.get("proxy_cpu_s_by_process")
            if not isinstance(by_process, dict) or not m["requests"]:
                continue
            for name, seconds in by_process.items():
                per = samples.setdefault(
                    name, {"cpu_us_per_req_fixed": [], "cpu_us_per_req_sat": []}
                )
                per[key].append(seconds * 1e6 / m["requests"])
    if not samples:
        return None
    return {
        name: {k: statistics.median(v) if v else None for k, v in per.items()}
        for name, per in samples.items()
    }


def added_latency(row: Mapping[str, Any], reference: Mapping[str, Any] | None) -> Json | None:
    """The fixed-rate p50 and p99 of `row` minus those of its `reference` row (µs), or None
    when either did not run."""
    if reference is None or row["status"] != "ok" or reference["status"] != "ok":
        return None
    med, ref = row["median"], reference["median"]
    if med is None or ref is None:
        return None
    out: Json = {"reference": reference["name"]}
    for pct in ("50", "99"):
        mine, base = med.get(f"fixed_p{pct}_us"), ref.get(f"fixed_p{pct}_us")
        out[f"p{pct}_us"] = None if mine is None or base is None else mine - base
    return out


def summarize_rows(rows: list[Json]) -> None:
    """Fill each row's "median" (ok rows with runs) and then every row's "ratios", in place;
    rows with a "reference" also get "added" and, with several proxies, "per_process"."""
    for row in rows:
        row["median"] = (
            median_of_runs(row["runs"]) if row["status"] == "ok" and row["runs"] else None
        )
        if row["median"] is None and row["status"] == "ok":
            row["status"] = "failed"
            row["note"] = row["note"] or "no run completed"
        pp = per_process_medians(row["runs"]) if row["median"] is not None else None
        if pp is not None:
            row["per_process"] = pp
    ratios = compute_ratios(rows)
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        row["ratios"] = ratios[row["name"]]
        if row.get("reference"):
            row["added"] = added_latency(row, by_name.get(row["reference"]))


def interference_of(m: Mapping[str, Any], *, proxy: bool = True) -> float:
    """The largest share of a pinned core other programs took during measurement `m`
    (the proxy core counts only where there is a proxy); 0.0 when not recorded."""
    info = m.get("interference") or {}
    keys = ("load_core_foreign", "proxy_core_foreign") if proxy else ("load_core_foreign",)
    values = [float(v) for k in keys if isinstance(v := info.get(k), int | float)]
    return max(values, default=0.0)


def interference_notes(rows: Sequence[Mapping[str, Any]], threshold: float = 0.05) -> list[str]:
    """A note per row where other programs took more than `threshold` of a pinned core
    during one of its measurements (from each measurement's optional "interference")."""
    notes: list[str] = []
    for row in rows:
        worst: dict[str, list[float]] = {"proxy_core_foreign": [], "load_core_foreign": []}
        for run in row["runs"]:
            for m in ("saturation", "fixed_rate"):
                info = run[m].get("interference") or {}
                proxy = run[m].get("proxy_cpu_s") is not None
                for key, values in worst.items():
                    if isinstance(info.get(key), int | float) and (proxy or key[0] == "l"):
                        values.append(float(info[key]))
        parts = [
            f"up to {max(values):.0%} of the {key.split('_')[0]} core "
            f"(median {statistics.median(values):.0%})"
            for key, values in worst.items()
            if values and max(values) > threshold
        ]
        if parts:
            notes.append(
                f"{row['name']}: other programs took " + " and ".join(parts) + " during its runs"
            )
    return notes


def _type_error(path: str, want: str, value: object) -> str:
    return f"{path}: expected {want}, got {type(value).__name__}"


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _validate_measurement(path: str, m: object) -> list[str]:
    if not isinstance(m, dict):
        return [_type_error(path, "object", m)]
    errors = [f"{path}: missing {k!r}" for k in _MEASUREMENT_KEYS if k not in m]
    if errors:
        return errors
    errors += [
        _type_error(f"{path}.{key}", "number", m[key])
        for key in ("requests", "duration_s", "rps", "latency_avg_us", "latency_max_us", "errors")
        if not _is_num(m[key])
    ]
    errors += [
        _type_error(f"{path}.{key}", "number or null", m[key])
        for key in ("proxy_cpu_s", "cpu_us_per_req")
        if m[key] is not None and not _is_num(m[key])
    ]
    pct = m["percentiles_us"]
    if not isinstance(pct, dict) or not all(k in pct and _is_num(pct[k]) for k in ("50", "99")):
        errors.append(f"{path}.percentiles_us: expected numbers for '50' and '99'")
    return errors


def _validate_row(path: str, row: object) -> list[str]:
    if not isinstance(row, dict):
        return [_type_error(path, "object", row)]
    errors = [f"{path}: missing {k!r}" for k in _ROW_KEYS if k not in row]
    if errors:
        return errors
    errors += [
        _type_error(f"{path}.{key}", "string", row[key])
        for key in ("name", "label", "group", "note")
        if not isinstance(row[key], str)
    ]
    if not isinstance(row["baseline"], bool):
        errors.append(_type_error(f"{path}.baseline", "boolean", row["baseline"]))
    if row["status"] not in _STATUSES:
        errors.append(f"{path}.status: expected one of {_STATUSES}, got {row['status']!r}")
    runs = row["runs"]
    if not isinstance(runs, list):
        return [*errors, _type_error(f"{path}.runs", "array", runs)]
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            errors.append(_type_error(f"{path}.runs[{i}]", "object", run))
            continue
        for m in ("saturation", "fixed_rate"):
            errors += _validate_measurement(f"{path}.runs[{i}].{m}", run.get(m))
    med = row["median"]
    if row["status"] == "ok":
        if not isinstance(med, dict):
            errors.append(_type_error(f"{path}.median", "object for an ok row", med))
        else:
            errors += [
                f"{path}.median: missing {k!r}" for k in (*MEDIAN_KEYS, "errors") if k not in med
            ]
    elif med is not None:
        errors.append(f"{path}.median: expected null for a {row['status']} row")
    ratios = row["ratios"]
    if ratios is not None:
        if not isinstance(ratios, dict):
            errors.append(_type_error(f"{path}.ratios", "object or null", ratios))
        else:
            errors += [f"{path}.ratios: missing {k!r}" for k in _RATIO_KEYS if k not in ratios]
    added = row.get("added")
    if added is not None:
        if not isinstance(added, dict):
            errors.append(_type_error(f"{path}.added", "object or null", added))
        else:
            errors += [
                f"{path}.added: missing {k!r}"
                for k in ("reference", "p50_us", "p99_us")
                if k not in added
            ]
    per_process = row.get("per_process")
    if per_process is not None and not (
        isinstance(per_process, dict) and all(isinstance(v, dict) for v in per_process.values())
    ):
        errors.append(_type_error(f"{path}.per_process", "object of objects or null", per_process))
    return errors


def validate_result(doc: object) -> list[str]:
    """Every way `doc` departs from the result schema (an empty list when it conforms)."""
    if not isinstance(doc, dict):
        return [_type_error("$", "object", doc)]
    errors = [f"$: missing {k!r}" for k in _TOP_KEYS if k not in doc]
    if errors:
        return errors
    if doc["schema"] != SCHEMA:
        errors.append(f"$.schema: expected {SCHEMA!r}, got {doc['schema']!r}")
    errors += [
        _type_error(f"$.{key}", "string", doc[key])
        for key in ("commit", "date", "python")
        if not isinstance(doc[key], str)
    ]
    errors += [
        _type_error(f"$.{key}", "object", doc[key])
        for key in ("loop", "machine", "pinning", "settings", "tools")
        if not isinstance(doc[key], dict)
    ]
    if not isinstance(doc["notes"], list):
        errors.append(_type_error("$.notes", "array", doc["notes"]))
    rows = doc["rows"]
    if not isinstance(rows, list):
        return [*errors, _type_error("$.rows", "array", rows)]
    names: set[str] = set()
    for i, row in enumerate(rows):
        errors += _validate_row(f"$.rows[{i}]", row)
        if isinstance(row, dict) and isinstance(row.get("name"), str):
            if row["name"] in names:
                errors.append(f"$.rows[{i}].name: duplicate {row['name']!r}")
            names.add(row["name"])
    return errors


# ---------------------------------------------------------------------------------------------
# rendering


def fmt_latency(us: float | None) -> str:
    """412.0 → '412 µs'; 1234.0 → '1.23 ms'; 2.5e6 → '2.50 s'; None → '—'."""
    if us is None:
        return "—"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1e6:
        return f"{us / 1e3:.2f} ms"
    return f"{us / 1e6:.2f} s"


def _fmt_num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}{X}"


def _one_line(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    line = line.replace("|", "\\|")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def summarize_note(note: str, limit: int = 160) -> str:
    """One table cell for a (possibly multi-line) note: its first and last lines."""
    lines = [line.strip() for line in note.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        return _one_line(f"{lines[0]} … {lines[-1]}", limit)
    return _one_line(note, limit)


def render_results_table(doc: Mapping[str, Any]) -> str:
    """The results table (markdown): one line per row, figures are medians of the runs."""
    lines = [
        "| row | req/s | p50 | p99 | CPU µs/req @ fixed rate | CPU µs/req @ saturation "
        f"| req/s {X} haproxy | CPU {X} haproxy | p99 {X} haproxy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in doc["rows"]:
        label = row["label"]
        if row["status"] != "ok":
            lines.append(f"| {label} | {row['status']}: {_one_line(row['note'])} | | | | | | | |")
            continue
        med = row["median"]
        ratios = row["ratios"] or {}
        base = " (baseline)" if row["baseline"] else ""
        errs = f" ⚠ {med['errors']:.0f} errors" if med.get("errors") else ""
        lines.append(
            f"| {label}{base}{errs} | {_fmt_num(med['rps'])} | {fmt_latency(med['p50_us'])} "
            f"| {fmt_latency(med['p99_us'])} | {_fmt_num(med['cpu_us_per_req_fixed'], 1)} "
            f"| {_fmt_num(med['cpu_us_per_req_sat'], 1)} | {_fmt_ratio(ratios.get('rps'))} "
            f"| {_fmt_ratio(ratios.get('cpu_fixed'))} | {_fmt_ratio(ratios.get('p99'))} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Check:
    """One measurable bound of a goal: a figure of `row` OP threshold.

    `source`: "ratios" or "median" (`row[source][key]`), "added" (the latency the row adds
    to its reference row, µs) or "per_process_max" (the largest `key` over the row's proxy
    processes: a pair's busier sidecar).
    """

    row: str
    source: str  # "ratios" | "median" | "added" | "per_process_max"
    key: str
    op: str  # ">=" | "<="
    threshold: float
    label: str  # e.g. "req/s", "CPU", "p99", "µs/req"

    def value(self, rows: Mapping[str, Mapping[str, Any]]) -> float | None:
        """The measured figure, or None when the row did not run."""
        row = rows.get(self.row)
        if row is None or row["status"] != "ok":
            return None
        if self.source == "per_process_max":
            per = row.get("per_process") or {}
            values = [v[self.key] for v in per.values() if v.get(self.key) is not None]
            return max(values) if values else None
        table = row.get(self.source)
        return None if table is None else table.get(self.key)

    def met(self, value: float) -> bool:
        """Whether `value` satisfies the bound."""
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def describe(self, value: float) -> str:
        """'0.97x req/s', '41.2 µs/req' or '+412 µs added p50'."""
        if self.source == "ratios":
            return f"{value:.2f}{X} {self.label}"
        if self.source == "added":
            return f"{fmt_added(value)} {self.label}"
        return f"{value:.1f} {self.label}"


def fmt_added(us: float | None) -> str:
    """Added latency with its sign: 412.0 → '+412 µs'; -3.0 → '-3 µs'; None → '—'."""
    if us is None:
        return "—"
    return ("+" if us >= 0 else "-") + fmt_latency(abs(us))


@dataclass(frozen=True, slots=True)
class Goal:
    """A line of DESIGN.md §5's goals table and the checks this harness can make of it."""

    path: str
    goal: str
    checks: tuple[Check, ...] = ()


GOALS: tuple[Goal, ...] = (
    Goal(
        "L4 TCP relay, keep-alive",
        f"≥ 0.95{X} haproxy (tcp mode) req/s; CPU/req ≤ 1.15{X}; p99 ≤ 1.25{X}",
        (
            Check("pymesh-l4-uvloop", "ratios", "rps", ">=", 0.95, "req/s"),
            Check("pymesh-l4-uvloop", "ratios", "cpu_fixed", "<=", 1.15, "CPU"),
            Check("pymesh-l4-uvloop", "ratios", "p99", "<=", 1.25, "p99"),
        ),
    ),
    Goal(
        "L4, a new connection per request",
        f"≥ 0.65{X} haproxy conn/s; zero crashes in a 60 s churn run on both loops",
        (
            Check("pymesh-l4-close-uvloop", "ratios", "rps", ">=", 0.65, "conn/s (uvloop)"),
            Check("pymesh-l4-close-asyncio", "ratios", "rps", ">=", 0.65, "conn/s (asyncio)"),
        ),
    ),
    Goal(
        "L7 HTTP/1.1, routing, no filters",
        f"≥ 0.75{X} haproxy req/s; CPU/req ≤ 1.5{X}",
        (
            Check("pymesh-l7-httptools", "ratios", "rps", ">=", 0.75, "req/s"),
            Check("pymesh-l7-httptools", "ratios", "cpu_fixed", "<=", 1.5, "CPU"),
        ),
    ),
    Goal(
        "L7 HTTP/1.1, mTLS + authz + metrics + access log",
        f"≥ 0.45{X} haproxy with TLS + ACL + logging",
        (Check("pymesh-l7-mtls", "ratios", "rps", ">=", 0.45, "req/s"),),
    ),
    Goal(
        "L7 HTTP/1.1 with the h11 codec",
        f"≥ 0.12{X} haproxy",
        (Check("pymesh-l7-h11", "ratios", "rps", ">=", 0.12, "req/s"),),
    ),
    Goal(
        "L7 HTTP/2 (h2load, 10 streams/conn, h2c in)",
        f"≥ 0.25{X} haproxy; p99 ≤ 5{X} haproxy's",
        (
            Check("pymesh-h2", "ratios", "rps", ">=", 0.25, "req/s"),
            Check("pymesh-h2", "ratios", "p99", "<=", 5.0, "p99"),
        ),
    ),
    Goal(
        "TLS keep-alive",
        f"L4 ≥ 0.9{X} haproxy L4-TLS; L7 ≥ 0.6{X} haproxy L7-TLS",
        (
            Check("pymesh-l4-mtls", "ratios", "rps", ">=", 0.9, "req/s (L4)"),
            Check("pymesh-l7-mtls-bare", "ratios", "rps", ">=", 0.6, "req/s (L7)"),
        ),
    ),
    Goal(
        "sidecar pair with mTLS at 1,000 req/s",
        "added p50 ≤ 1 ms; added p99 ≤ 3 ms, no worse than a haproxy pair",
        (
            Check("pair-pymesh-mtls", "added", "p50_us", "<=", 1000.0, "p50"),
            Check("pair-pymesh-mtls", "added", "p99_us", "<=", 3000.0, "p99"),
            Check("pair-pymesh-mtls", "ratios", "fixed_p50", "<=", 1.0, "haproxy pair's p50"),
            Check("pair-pymesh-mtls", "ratios", "fixed_p99", "<=", 1.0, "haproxy pair's p99"),
        ),
    ),
    Goal(
        "sidecar CPU at 1,000 req/s",
        "≤ 100 µs per request per L7 sidecar",
        (
            Check("pymesh-l7-httptools", "median", "cpu_us_per_req_fixed", "<=", 100.0, "µs/req"),
            Check("pymesh-l7-h11", "median", "cpu_us_per_req_fixed", "<=", 100.0, "µs/req (h11)"),
            Check(
                "pair-pymesh-mtls",
                "per_process_max",
                "cpu_us_per_req_fixed",
                "<=",
                100.0,
                "µs/req (busier sidecar of the pair)",
            ),
        ),
    ),
    Goal("memory", "idle sidecar ≤ 30 MB RSS; ≤ 4 KB per idle plain connection; …"),
    Goal("control plane", "a change reaches 1,000 subscribed sidecars in ≤ 2 s"),
    Goal("Python peers (same L7 run)", f"≥ 4{X} proxy.py and ≥ 40{X} mitmdump"),
)


def render_goals(doc: Mapping[str, Any], goals: Sequence[Goal] = GOALS) -> str:
    """DESIGN.md §5's goals with a column comparing this run's figures to each goal."""
    rows = {row["name"]: row for row in doc["rows"]}
    lines = ["| path | goal (DESIGN.md §5) | this run |", "|---|---|---|"]
    for goal in goals:
        parts: list[str] = []
        verdicts: list[bool] = []
        for check in goal.checks:
            value = check.value(rows)
            if value is None:
                continue
            ok = check.met(value)
            verdicts.append(ok)
            parts.append(check.describe(value) + ("" if ok else " ✗"))
        if not goal.checks:
            cell = "not measured by this harness yet"
        elif not verdicts:
            cell = "not measured in this run"
        else:
            verdict = "**met**" if all(verdicts) else "**not met**"
            if len(verdicts) < len(goal.checks):
                verdict += " (partly measured)"
            cell = f"{verdict}: " + ", ".join(parts)
        lines.append(f"| {goal.path} | {goal.goal} | {cell} |")
    return "\n".join(lines)


def _describe_run(doc: Mapping[str, Any], source: str) -> str:
    s = doc["settings"]
    pin = doc["pinning"]
    loop = doc["loop"]
    return (
        f"Run `{source}`: commit `{doc['commit']}`, {doc['date']}, Python {doc['python']}, "
        f"sidecar loop {loop.get('default', '?')} (uvloop {loop.get('uvloop', '?')}), "
        f"{doc['machine'].get('nproc', '?')} cores: load generator and nginx on core "
        f"{pin.get('load_core', '?')}, proxy on core {pin.get('proxy_core', '?')}. "
        f"Saturation: `wrk -t{s.get('threads', '?')} -c{s.get('connections', '?')} "
        f"-d{s.get('duration_s', '?')}s --latency`; fixed rate: {s.get('rate', 0):,.0f} req/s "
        f"for {s.get('rate_duration_s', '?')} s over {s.get('rate_connections', '?')} "
        f"connections. Median of {s.get('runs', '?')} runs per row." + _describe_h2(doc)
    )


def _describe_h2(doc: Mapping[str, Any]) -> str:
    # only for documents with h2load rows (older results have none: their text is unchanged)
    if not any(row.get("load") == "h2load" for row in doc["rows"]):
        return ""
    s = doc["settings"]
    return (
        f" HTTP/2 rows (h2c, prior knowledge): `h2load -c{s.get('h2_connections', '?')} "
        f"-m{s.get('h2_streams', '?')} -D{s.get('duration_s', '?')}s` "
        f"({s.get('h2_streams', '?')} streams per connection), fixed rate with `--rps` over "
        f"{s.get('rate_connections', '?')} connections; their p50/p99 come from h2load's "
        "per-request log (`--log-file`)."
    )


def _kinds(row: Mapping[str, Any]) -> set[str]:
    # the peer kinds of a row's peer document, nested ones (a TLS client's) included
    kinds: set[str] = set()
    peer = row.get("peer")
    while isinstance(peer, dict):
        kinds.add(str(peer.get("kind")))
        peer = peer.get("inner")
    return kinds


def _describe_tls(doc: Mapping[str, Any]) -> str:
    # only for documents with TLS rows (older results have none: their text is unchanged)
    kinds = set().union(*(_kinds(row) for row in doc["rows"]))
    text = ""
    if "tlsclient" in kinds:
        text += (
            " TLS rows: wrk cannot present a client certificate, so a TLS client (haproxy "
            "`mode tcp`, one thread, on the load core) turns each wrk connection into a TLS 1.3 "
            "connection to the proxy under test, with a certificate of the run's pymesh CA "
            "(ECDSA P-256) and the server's verified; the same client drives haproxy and "
            "pymesh, and its CPU is the load side's."
        )
    if kinds & {"haproxypair", "pymeshpair"}:
        text += (
            " Sidecar pairs: wrk → A (plaintext in, TLS with a client certificate out) → B "
            "(TLS in, client verified, plaintext out) → nginx, both proxies on the proxy core; "
            "CPU µs/req is their sum; added latency is the fixed-rate p50/p99 minus direct's."
        )
    return text


def render_pairs_table(doc: Mapping[str, Any]) -> str | None:
    """The rows with "added" latency (the sidecar pairs) and their reference row: fixed-rate
    percentiles, added latency and CPU per proxy; None when the run has no such row."""
    pairs = [row for row in doc["rows"] if row.get("reference")]
    if not pairs:
        return None
    rows = {row["name"]: row for row in doc["rows"]}
    refs = dict.fromkeys(row["reference"] for row in pairs)
    lines = [
        "| row @ fixed rate | p50 | p99 | added p50 | added p99 | CPU µs/req (sum) | per proxy |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for row in [*(rows[r] for r in refs if r in rows), *pairs]:
        label = row["label"] + (" (reference)" if row["name"] in refs else "")
        med = row.get("median")
        if row["status"] != "ok" or med is None:
            lines.append(f"| {label} | {row['status']} | | | | | |")
            continue
        added = row.get("added") or {}
        per = row.get("per_process") or {}
        per_text = " + ".join(
            f"{name.rsplit('/', 1)[-1]} {_fmt_num(v.get('cpu_us_per_req_fixed'), 1)}"
            for name, v in per.items()
        )
        lines.append(
            f"| {label} | {fmt_latency(med.get('fixed_p50_us'))} "
            f"| {fmt_latency(med.get('fixed_p99_us'))} | {fmt_added(added.get('p50_us'))} "
            f"| {fmt_added(added.get('p99_us'))} "
            f"| {_fmt_num(med.get('cpu_us_per_req_fixed'), 1)} | {per_text or '—'} |"
        )
    return "\n".join(lines)


def render_report(doc: Mapping[str, Any], source: str) -> str:
    """The generated README block: run description, results table, the sidecar pairs (if
    any), goals table, notes."""
    parts = [_describe_run(doc, source) + _describe_tls(doc), "", render_results_table(doc)]
    pairs = render_pairs_table(doc)
    if pairs is not None:
        parts += [
            "",
            f"Sidecar pairs at the fixed rate ({doc['settings'].get('rate', 0):,.0f} req/s), "
            "latency added to the reference row:",
            "",
            pairs,
        ]
    parts += [
        "",
        "Goals (DESIGN.md §5) against this run:",
        "",
        render_goals(doc),
    ]
    notes = [n for n in doc.get("notes", []) if isinstance(n, str)]
    if notes:
        parts += ["", "Notes:", "", *(f"- {_one_line(n, 400)}" for n in notes)]
    return "\n".join(parts)


def replace_between_markers(text: str, block: str) -> str:
    """`text` with everything between README_BEGIN and README_END replaced by `block`."""
    start = text.find(README_BEGIN)
    end = text.find(README_END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"README lacks the markers {README_BEGIN} ... {README_END} in order")
    return text[: start + len(README_BEGIN)] + "\n" + block.strip("\n") + "\n" + text[end:]

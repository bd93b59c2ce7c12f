"""`zsd-bench check`: a regression gate on quantities measured WITHIN one run (ratios and deltas), so that a slower or
noisier machine does not make it flaky: backend speed-up over the PyTorch baseline, and accuracy vs the reference.

Every report zsd-bench writes carries a `gate` section: {"speedup": {key: torch_ms / backend_ms}, "accuracy":
{"bucket/metric": value}}. Several report files can be given for each side; their gate sections are merged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zsdeploy.runtime.errors import ZsdError

from .accuracy import higher_is_better


def load_gate(paths: list[str]) -> dict[str, dict[str, float]]:
    merged: dict[str, dict[str, float]] = {"speedup": {}, "accuracy": {}}
    for p in paths:
        try:
            doc = json.loads(Path(p).read_text())
        except FileNotFoundError:
            raise ZsdError(f"{p} does not exist.", "pass report.json files written by zsd-bench.") from None
        except json.JSONDecodeError as e:
            raise ZsdError(f"{p} is not JSON ({e}).", "pass report.json files written by zsd-bench.") from None
        gate = doc.get("gate")
        if not isinstance(gate, dict):
            raise ZsdError(f"{p} has no 'gate' section.", "pass a report.json written by zsd-bench latency/accuracy.")
        for k in merged:
            merged[k].update(gate.get(k) or {})
    return merged


def compare(baseline: dict[str, dict[str, float]], current: dict[str, dict[str, float]],
            tol: dict[str, Any]) -> list[dict[str, Any]]:
    c = tol.get("check") or {}
    frac = float(c.get("speedup_min_fraction", 0.75))
    drops = c.get("accuracy_max_drop") or {}
    factor = float(c.get("error_max_factor", 10.0))
    floor = float(c.get("error_floor", 1e-5))
    rows = []
    for key, base in sorted(baseline["speedup"].items()):
        cur = current["speedup"].get(key)
        if cur is None:
            rows.append({"kind": "speedup", "key": key, "baseline": base, "current": None, "limit": None,
                         "status": "MISSING"})
            continue
        limit = base * frac
        rows.append({"kind": "speedup", "key": key, "baseline": base, "current": cur, "limit": f">= {limit:.3f}",
                     "status": "ok" if cur >= limit else "REGRESSION"})
    for key, base in sorted(baseline["accuracy"].items(), key=lambda kv: _bucket_rank(kv[0])):
        cur = current["accuracy"].get(key)
        metric = key.split("/", 1)[1]
        if cur is None:
            rows.append({"kind": "accuracy", "key": key, "baseline": base, "current": None, "limit": None,
                         "status": "MISSING"})
            continue
        if higher_is_better(metric):
            limit = base - float(drops.get(metric, 0.0))
            ok, lim_txt = cur >= limit, f">= {limit:.6g}"
        else:
            limit = max(base * factor, floor)
            ok, lim_txt = cur <= limit, f"<= {limit:.3g}"
        rows.append({"kind": "accuracy", "key": key, "baseline": base, "current": cur, "limit": lim_txt,
                     "status": "ok" if ok else "REGRESSION"})
    return rows


def _bucket_rank(key: str) -> tuple[int, str]:
    order = {"small": 0, "medium": 1, "large": 2, "all": 3}
    return order.get(key.split("/", 1)[0], 9), key


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    head = ["kind", "key", "baseline", "current", "limit", "status"]
    body = [[r["kind"], r["key"], f(r["baseline"]), f(r["current"]), f(r["limit"]), r["status"]] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body]
    return "\n".join(out)


def verdict(rows: list[dict[str, Any]]) -> tuple[bool, str]:
    bad = [r for r in rows if r["status"] != "ok"]
    if not rows:
        return False, "FAIL: the baseline has nothing to compare"
    if bad:
        return False, f"FAIL: {len(bad)} of {len(rows)} checks regressed or are missing (" + ", ".join(
            r["key"] for r in bad[:5]) + (", ..." if len(bad) > 5 else "") + ")"
    return True, f"PASS: {len(rows)} checks within tolerance"

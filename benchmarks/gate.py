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
    fix = "pass report.json files written by zsd-bench latency/accuracy (or a baseline from zsd-bench merge)."
    for p in paths:
        try:
            doc = json.loads(Path(p).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ZsdError(f"{p} does not exist.", fix) from None
        except IsADirectoryError:
            raise ZsdError(f"{p} is a directory, not a report file.", fix) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ZsdError(f"{p} is not JSON ({e}).", fix) from None
        gate = doc.get("gate") if isinstance(doc, dict) else None
        if not isinstance(gate, dict):
            raise ZsdError(f"{p} has no 'gate' section.", fix)
        for k in merged:
            section = gate.get(k) or {}
            # Every value must be a number: a string or null here would otherwise surface as a bogus regression.
            bad = [key for key, v in section.items() if isinstance(v, bool) or not isinstance(v, (int, float))] \
                if isinstance(section, dict) else None
            if bad is None or bad:
                raise ZsdError(f"{p}: gate.{k} must map names to numbers"
                               + (f"; {', '.join(map(repr, bad[:3]))} are not numbers." if bad else "."), fix)
            merged[k].update({key: float(v) for key, v in section.items()})
    return merged


def compare(baseline: dict[str, dict[str, float]], current: dict[str, dict[str, float]],
            tol: dict[str, Any]) -> list[dict[str, Any]]:
    c = tol.get("check") or {}
    frac = float(c.get("speedup_min_fraction", 0.75))
    drops = c.get("accuracy_max_drop") or {}
    # reduced-precision graphs (keys "fp16:small/...") may move more between CPUs (int8 kernels differ by ISA)
    by_precision = c.get("accuracy_max_drop_by_precision") or {}
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
            precision = key.split("/", 1)[0].rpartition(":")[0]  # "" for fp32 graphs
            limit = base - float({**drops, **(by_precision.get(precision) or {})}.get(metric, 0.0))
            ok, lim_txt = cur >= limit, f">= {limit:.6g}"
        else:
            limit = max(base * factor, floor)
            ok, lim_txt = cur <= limit, f"<= {limit:.3g}"
        rows.append({"kind": "accuracy", "key": key, "baseline": base, "current": cur, "limit": lim_txt,
                     "status": "ok" if ok else "REGRESSION"})
    return rows


def _bucket_rank(key: str) -> tuple[str, int, str]:
    """fp32 first, then each reduced precision; small bucket first within each."""
    order = {"small": 0, "medium": 1, "large": 2, "all": 3}
    head = key.split("/", 1)[0]
    precision, _, bucket = head.rpartition(":")
    return precision, order.get(bucket, 9), key


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

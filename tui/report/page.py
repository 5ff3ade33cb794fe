"""The report page: one self-contained HTML file, no script, nothing fetched when it is viewed.

Why no script: the page is attached to issues and opened by people who did not make it; with
the charts inlined as SVG and the text as HTML, it needs nothing but a browser, offline, and
a Content-Security-Policy of ``default-src 'none'`` can forbid every fetch and every script.
Should a record's string ever slip through unescaped, the browser still refuses to run it.

Every string from a record (model names, server identity, error classes, marks, config) goes
through :func:`text` (control characters as escapes, then HTML-escaped): it is shown as text,
never read as markup. The summary is the terminal's own text (:func:`~soaktop.tui.text.
summary_table`, with the soak verdict and every warning it gives), in a ``<pre>``.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from soaktop.tui.report.charts import Chart
from soaktop.tui.report.series import RecordSeries
from soaktop.tui.text import soak_explanation, summary_table, terminal_safe

#: No fetch of any kind, no script; inline styles and inline SVG only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1150px;
color:#222222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;
margin-top:1.6em}
table.facts{border-collapse:collapse;font-size:.9em}table.facts td,table.facts th{
padding:2px 10px 2px 0;vertical-align:top;text-align:left}table.facts th{color:#555555;
font-weight:600;white-space:nowrap}
pre{background:#f7f7f7;padding:.7em;overflow-x:auto;font-size:.8em;line-height:1.3}
.verdict{font-size:1.05em;padding:.5em .8em;border-radius:4px;margin:.6em 0}
.verdict.stable{background:#e6f4ea}.verdict.degrading{background:#fff4e5}
.verdict.throttled{background:#fdecea}.verdict.none,.verdict.too_short{background:#eee}
figure.chart{margin:0}figure.chart svg{width:100%;height:auto;display:block}
.dists{display:flex;flex-wrap:wrap}.dists figure{flex:1 1 540px}
.warn{color:#b00020}.muted{color:#666666;font-size:.85em}
code{font-size:.9em}
"""


def text(value: Any) -> str:
    """A value from a record as HTML text: control characters escaped, markup escaped."""
    return html.escape(terminal_safe(str(value)), quote=True)


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return f"<code>{text(json.dumps(value, default=str, ensure_ascii=False))}</code>"
    return text("n/a" if value is None else value)


def _facts_table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{text(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows
                   if v not in (None, "", {}, []))
    return f'<table class="facts">{body}</table>'


def run_facts(r: RecordSeries) -> list[tuple[str, Any]]:
    """What was run, where and when: the header's facts that say it, most wanted first."""
    h = r.header
    result = r.summary.result()
    config = h.config if h else {}
    env = h.environment if h else {}
    backend = h.backend if h else {}
    nvidia = env.get("nvidia") if isinstance(env.get("nvidia"), dict) else {}
    gpus = nvidia.get("gpus") if isinstance(nvidia, dict) else None
    return [
        ("record", str(r.path)),
        ("recorded", h.wall_start if h else None),
        ("duration", f"{r.duration_s:,.1f} s"),
        ("ended", result.ended),
        ("model", config.get("model")),
        ("backend", config.get("backend")),
        ("target", backend.get("url") or backend.get("device") or config.get("url")),
        ("server", _server(backend)),
        ("concurrency", config.get("concurrency")),
        ("host", env.get("hostname")),
        ("CPU", f"{env.get('cpu_model')} ({env.get('cpu_cores_logical')} logical cores)"
         if env.get("cpu_model") else None),
        ("GPUs", gpus if gpus else nvidia.get("reason") if nvidia else None),
        ("OS", " ".join(str(env[k]) for k in ("os", "kernel") if env.get(k)) or None),
        ("soaktop", " ".join(str(x) for x in (env.get("soaktop_version"),
                                              env.get("git_commit")) if x) or None),
    ]


def _server(backend: dict[str, Any]) -> str | None:
    """The server's identity as probed (its ``Server`` header and version), else its kind."""
    server = backend.get("server")
    if isinstance(server, dict):
        parts = [str(server[k]) for k in ("header", "version") if server.get(k)]
        return " ".join(parts) or None
    return None if server is None else str(server) or backend.get("kind")


def _verdict(r: RecordSeries) -> str:
    """The soak verdict's box; its explanation already begins with the verdict's word."""
    soak = r.summary.result().soak
    if soak is None:
        return ('<div class="verdict none">soak verdict: none (no measured phase)</div>')
    css = soak.verdict.name.lower()  # stable, degrading, throttled, too_short: no spaces
    return (f'<div class="verdict {css}"><b>soak verdict:</b> '
            f'{text(soak_explanation(soak))}</div>')


def _record_section(r: RecordSeries, title: str) -> str:
    h = r.header
    result = r.summary.result()
    parts = [f"<h2>{text(title)}</h2>", _facts_table(run_facts(r)), _verdict(r),
             "<h3>Summary</h3>",
             f'<pre class="summary">{text(summary_table(result, width=150))}</pre>']
    if r.warnings:
        parts.append('<p class="warn">Lines of the record that could not be used:</p><ul>'
                     + "".join(f"<li>{text(w)}</li>" for w in r.warnings[:50]) + "</ul>")
    if h is not None:
        parts.append("<details><summary>Configuration, server identity, environment, "
                     "workload (as recorded)</summary>")
        for name, value in (("config", h.config), ("server (backend)", h.backend),
                            ("environment", h.environment), ("workload", h.workload)):
            if value:
                parts.append(f"<h4>{text(name)}</h4>" + _facts_table(value.items()))
        parts.append("</details>")
    return "\n".join(parts)


def comparison_text(records: list[RecordSeries]) -> str:
    """``compare``'s own text for each record against the first (its metrics table and its
    "ran differently" lines), as the terminal prints it."""
    from soaktop.engine.metrics.compare import compare, differences
    from soaktop.tui.record_commands import print_comparison
    from soaktop.tui.text import difference_lines

    a = records[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for b in records[1:]:
            print_comparison(str(a.path), str(b.path), compare(a.summary, b.summary),
                             difference_lines(differences(a.summary, b.summary)), False)
            print()
    return out.getvalue()


def _figure(chart: Chart) -> str:
    return (f'<figure class="chart" id="chart-{text(chart.key)}" data-chart="{text(chart.key)}">'
            f"{chart.svg()}</figure>")


def render(records: list[RecordSeries], charts: list[Chart]) -> str:
    """The whole page for one record, or an overlay of several (A, B, ... in order)."""
    overlay = len(records) > 1
    names = ", ".join(r.path.name for r in records)
    title = f"soaktop report: {names}"
    sections = [f"<h1>{text(title)}</h1>",
                f'<p class="muted">made {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by '
                f"<code>soaktop report</code>; times are seconds since each run's start"
                + ("; one colour a record" if overlay else "; phases shaded (warm-up darker), "
                   "marks dashed") + "</p>"]
    if overlay:
        sections.append("<h2>Compared</h2><p>" + "<br>".join(
            f"<b>{chr(ord('A') + i)}</b>: {text(r.path)}" for i, r in enumerate(records))
            + "</p>")
        sections.append(f'<pre class="compare">{text(comparison_text(records))}</pre>')
    for i, r in enumerate(records):
        label = f"{chr(ord('A') + i)}: {r.path.name}" if overlay else "The run"
        section = _record_section(r, label)
        if overlay:
            section = f"<details><summary>{text(label)}: run facts and summary</summary>" \
                      f"{section}</details>"
        sections.append(section)
    groups = (("time", "Over time"), ("distribution", "Distributions"),
              ("plan", "Ramp / SLO search"))
    for section, heading in groups:
        chosen = [c for c in charts if c.section == section]
        if not chosen:
            continue
        cls = ' class="dists"' if section != "time" else ""
        sections.append(f'<h2 id="{section}">{heading}</h2><div{cls}>'
                        + "\n".join(_figure(c) for c in chosen) + "</div>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(sections) + "\n</body></html>\n")

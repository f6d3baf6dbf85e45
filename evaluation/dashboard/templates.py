"""The dashboard's HTML as Jinja2 templates with autoescaping on: every value from the URL or the data is
escaped where it is rendered, and only ``Markup`` (the SVG charts, other rendered templates) goes in as
it is. Kept in Python (a ``DictLoader``) so the package needs no data files."""

from __future__ import annotations

from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined
from markupsafe import Markup

from evaluation.dashboard.charts import fmt

MACROS = """\
{% macro msg(text, cls="note") %}{% if text %}<p class="{{ cls }}">{{ text }}</p>{% endif %}{% endmacro %}
{% macro ci(bounds) %}{% if bounds %} <span class="ci">[{{ bounds[0] }}, {{ bounds[1] }}]</span>{% endif %}{% endmacro %}
"""

SECTION = """\
{% from "macros" import msg %}
<section id="{{ sid }}"><h2>{{ title }}</h2>{% if blurb %}<p class="blurb">{{ blurb }}</p>{% endif %}
{{- inner if inner is not none else msg(error, "error") }}</section>"""

# Figures of one section: an optional note, an optional lead figure, then the rest side by side.
FIGURES = """\
{% from "macros" import msg %}
{{ msg(note) }}{% if lead %}<div class="fig">{{ lead }}</div>{% endif %}
{%- if figs is not none %}<div class="figs">{% for f in figs %}{{ f }}{% endfor %}</div>{% endif %}"""

# ``cells``: dicts of ``attrs`` (rendered with xmlattr, None left out), ``text`` and ``ci`` (formatted bounds).
METRIC_TABLE = """\
{% from "macros" import msg, ci %}
{% if baseline %}<p class="summary">Against <b>{{ baseline }}</b>: \
<span class="regressed">{{ counts.regressed }} regressed</span>, \
<span class="improved">{{ counts.improved }} improved</span> \
(worse/better beyond the CI and {{ threshold }}).</p>{% endif %}
{{- msg(message) }}<div class="scroll"><table class="metrics"><thead><tr>
{%- for h in head %}<th{{ {"class": h.cls}|xmlattr }}>{{ h.label }}{% if h.small %}<br><small>{{ h.small }}</small>\
{% endif %}</th>{% endfor %}</tr></thead><tbody>
{%- for row in rows %}<tr>{% for c in row %}<td{{ c.attrs|xmlattr }}>{{ c.text }}{{ ci(c.ci) }}</td>{% endfor %}</tr>\
{% endfor %}</tbody></table></div>"""

REGRESSION_TABLE = """\
<table class="regression"><thead><tr><th>run</th><th>baseline run</th><th>benchmark</th><th>task</th>\
<th>metric</th><th>value</th><th>baseline</th><th>Δ</th><th>threshold</th><th>regressed</th></tr></thead><tbody>
{%- for r in rows %}<tr class="{{ 'regressed' if r.regressed else '' }}"><td>{{ r.run_id }}</td>\
<td>{{ r.baseline_run_id }}</td><td>{{ r.benchmark }}</td><td>{{ r.task }}</td><td>{{ r.metric }}</td>\
<td>{{ r.value|fmt }}</td><td>{{ r.baseline_value|fmt }}</td><td>{{ r.delta|fmt(True) }}</td>\
<td>{{ r.threshold|fmt }}</td><td>{{ 'yes' if r.regressed else 'no' }}</td></tr>{% endfor %}</tbody></table>"""

CONTROLS = """\
<form id="controls" class="controls" method="get" action="/">
<fieldset id="pick-variants"><legend>Variants</legend>
{%- for x in variants %}<label><input type="checkbox" name="variants" value="{{ x }}"\
{{ " checked" if "variant:" ~ x in chosen else "" }}> {{ x }}</label>{% else %}<i>none</i>{% endfor %}</fieldset>
<fieldset id="pick-runs"><legend>Runs</legend>
{%- for r in runs %}<label title="{{ r.benchmarks }}"><input type="checkbox" name="runs" value="{{ r.run_id }}"\
{{ " checked" if "run:" ~ r.run_id in chosen else "" }}> {{ r.run_id }} <small>({{ r.kind }}, {{ r.variant }}, {{ r.ts }})\
</small></label>{% else %}<i>none</i>{% endfor %}</fieldset>
<div><label>Baseline<br><select name="baseline" id="baseline">
{%- for key, label in baseline_options %}<option value="{{ key }}"{{ " selected" if key == baseline else "" }}>{{ label }}\
</option>{% endfor %}</select></label><br>
<label>Benchmark<br><select name="benchmark" id="benchmark"><option value="all">all</option>
{%- for b in benchmarks %}<option value="{{ b }}"{{ " selected" if b == benchmark else "" }}>{{ b }}</option>{% endfor %}
{%- if benchmark and benchmark not in benchmarks %}<option value="{{ benchmark }}" selected>{{ benchmark }}</option>\
{% endif %}</select></label><br>
<label title="A change counts as a regression only beyond the CI and beyond the threshold: blank = the nightly
 check's per-metric thresholds, a number = that fraction of the baseline for every metric">Threshold
<br><input type="number" name="threshold" id="threshold" min="0" step="0.01" placeholder="per metric"
 value="{{ threshold }}"></label></div>
<div><label>Stage (routing)<br><input type="number" name="stage" id="stage" min="1" max="3" value="{{ stage }}"
 placeholder="last"></label><br><label>MoE layer (task share)<br><input type="number" name="layer" id="layer" min="0"
 value="{{ layer }}" placeholder="all"></label><br><br>
<button type="submit" id="update">Update</button> <span id="picked" class="meta"></span></div>
</form>"""

PAGE = """\
{% from "macros" import msg %}
<!doctype html><html lang='en'><head><meta charset='utf-8'><title>UniMoE-Audio ablations</title><style>
body{font-family:system-ui,sans-serif;margin:0 1.5rem 2rem;color:#222}
h1{font-size:1.4rem;margin:1rem 0 .3rem} h2{font-size:1.15rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:1.8rem}
form.controls{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start;background:#f6f7f9;padding:.7rem;border-radius:6px}
fieldset{border:1px solid #ccc;border-radius:4px;max-height:11rem;overflow:auto;min-width:10rem}
fieldset label{display:block;white-space:nowrap;font-size:.9rem}
table{border-collapse:collapse;font-size:.88rem} th,td{border:1px solid #ddd;padding:.25rem .45rem;text-align:left}
th{background:#f0f0f0} td.value,td.delta{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#777;font-size:.8em} td.regressed,tr.regressed,span.regressed{background:#fde0e0;color:#a00}
td.improved,span.improved{background:#e2f5e2;color:#075} td.topline,th.topline{background:#f4f1fa}
td.regressed{font-weight:600} .note{color:#555;font-style:italic} .error{color:#a00} .blurb{color:#555;font-size:.9rem}
.figs{display:flex;flex-wrap:wrap;gap:1rem} .scroll{overflow-x:auto} .meta{color:#777;font-size:.8rem}
</style><script>
// Keep the baseline in the comparison and say how many series are picked.
document.addEventListener('DOMContentLoaded', function () {
  var form = document.getElementById('controls');
  function count() {
    var n = form.querySelectorAll('input[name=variants]:checked, input[name=runs]:checked').length;
    document.getElementById('picked').textContent = n + ' picked';
  }
  form.addEventListener('change', count); count();
});
</script></head><body><h1>UniMoE-Audio ablation dashboard</h1>\
<p class="meta">workspace {{ workspace }} — Parquet files: {{ files }}</p>\
{{ controls }}{% for n in notes %}{{ msg(n) }}{% endfor %}{% for s in sections %}{{ s }}{% endfor %}</body></html>"""

NOT_FOUND = """<!doctype html><title>not found</title><p>No page at {{ path }}. <a href="/">Dashboard</a></p>"""
ERROR = """<!doctype html><title>error</title><p>Internal error: {{ error }}</p>"""

_env = Environment(
    loader=DictLoader({"macros": MACROS, "section": SECTION, "figures": FIGURES, "metric_table": METRIC_TABLE,
                       "regression_table": REGRESSION_TABLE, "controls": CONTROLS, "page": PAGE,
                       "not_found": NOT_FOUND, "error": ERROR}),
    autoescape=True, undefined=StrictUndefined, trim_blocks=True, keep_trailing_newline=False,
)
_env.filters["fmt"] = fmt


def render(name: str, **context: Any) -> Markup:
    """Template ``name`` rendered with ``context`` (escaped unless ``Markup``), as ``Markup`` to embed."""
    return Markup(_env.get_template(name).render(**context))

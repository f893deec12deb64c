"""The Grafana dashboard in dashboards/ against what channels_valkey.prometheus exports.

Every metric a panel or a variable queries must be one the exporter produces, every counter
it produces must be on some panel, and the JSON must have the shape Grafana imports: panels
with queries, unique ids, panels that do not overlap, and every ``$variable`` defined.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.prometheus import register
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "channels-valkey.json"

# Nothing listens here: the counters are read in process memory, no connection is made.
NOWHERE = ["valkey://127.0.0.1:1"]

# Labels Prometheus itself puts on every scraped series.
TARGET_LABELS = {"job", "instance"}

# --------------------------------------------------------------------------
# Reading PromQL
# --------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w:$.])[A-Za-z_:][\w:]*")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
_LABEL_NAME = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*)\s*,\s*([A-Za-z_]\w*)\s*\)\s*$", re.DOTALL)
_BY = re.compile(r"\bby\s*\(([^()]*)\)", re.IGNORECASE)
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or variables).

    Strings, label matchers, ranges and grouping clauses are cut out first; of the
    identifiers left, those followed by ``(`` are functions or aggregations.
    """
    assert "__name__" not in expr, f"selects metrics by __name__, which is not checked: {expr}"
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or re.match(r"\s*\(", text[match.end() :]):
            continue
        names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    text = _STRING.sub('""', expr)
    names = set()
    for matchers in _MATCHERS.findall(text):
        names.update(_LABEL_NAME.findall(matchers))
    for grouping in _GROUPING.findall(text):
        names.update(name.strip() for name in grouping.split(",") if name.strip())
    return names


def variables_used(text: str) -> set[str]:
    """The dashboard variables ``text`` refers to, without Grafana's own ``$__`` ones."""
    used = {next(group for group in match.groups() if group) for match in _VARIABLE.finditer(text)}
    return {name for name in used if not name.startswith("__")}


def test_metric_names_reads_promql() -> None:
    assert metric_names(
        'sum by (layer, instance) (rate(a_total{layer=~"$layer", job="x"}[$__rate_interval]))'
    ) == {"a_total"}
    assert metric_names("sum(rate(a[5m])) by (job) / on(job) group_left(instance) b > bool 0") == {
        "a",
        "b",
    }
    assert metric_names("max_over_time(deriv(a:recorded[5m:1m])[1h:]) offset 1h") == {"a:recorded"}
    assert metric_names('a unless b or histogram_quantile(0.9, c{le!="+Inf"}) * 1e3') == {
        "a",
        "b",
        "c",
    }
    assert label_names('sum without (pod) (a{job="j", layer!~"x|y"})') == {"pod", "job", "layer"}
    assert variables_used('a{x="$one", y="${two:regex}", z="[[three]]"}[$__range]') == {
        "one",
        "two",
        "three",
    }


# --------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------


def load() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as file:
        dashboard: dict[str, Any] = json.load(file)
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def label_values_variables(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(name, series selector, label) of every ``label_values(selector, label)`` variable."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query if isinstance(query, str) else query["query"]
            match = _LABEL_VALUES.match(text)
            assert match, f"variable {variable['name']}: not a label_values query: {text}"
            yield variable["name"], match.group(1), match.group(2)


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel query and every label_values variable."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for name, selector, _label in label_values_variables(dashboard):
        yield f"variable {name}", selector


def queried_metrics(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Each metric name the dashboard queries, with where it does."""
    found: dict[str, set[str]] = {}
    for where, expr in queries(dashboard):
        for name in metric_names(expr):
            found.setdefault(name, set()).add(where)
    return found


def panel_metrics(dashboard: dict[str, Any]) -> set[str]:
    return {
        name
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }


# --------------------------------------------------------------------------
# The exporter
# --------------------------------------------------------------------------


@pytest.fixture(params=[ValkeyChannelLayer, ValkeyPubSubChannelLayer], ids=["core", "pubsub"])
async def exported(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, set[str]]]:
    """What a layer's exporter produces in a fresh registry: sample name -> its label names."""
    layer = request.param(hosts=NOWHERE)
    registry = CollectorRegistry()
    register(layer, alias="default", registry=registry)
    produced = {
        sample.name: set(sample.labels)
        for family in registry.collect()
        for sample in family.samples
    }
    yield produced
    await layer.close()


def missing_from_exporter(dashboard: dict[str, Any], produced: dict[str, set[str]]) -> set[str]:
    return set(queried_metrics(dashboard)) - set(produced)


def not_on_any_panel(dashboard: dict[str, Any], produced: dict[str, set[str]]) -> set[str]:
    return set(produced) - panel_metrics(dashboard)


def test_every_queried_metric_is_exported(exported: dict[str, set[str]]) -> None:
    dashboard = load()
    queried = queried_metrics(dashboard)
    assert queried, "the dashboard queries no metric"
    unknown = {name: sorted(queried[name]) for name in missing_from_exporter(dashboard, exported)}
    assert not unknown, f"queried but not exported: {unknown}"


def test_every_exported_counter_is_on_a_panel(exported: dict[str, set[str]]) -> None:
    assert exported, "the exporter produced nothing"
    missing = not_on_any_panel(load(), exported)
    assert not missing, f"exported but on no panel: {sorted(missing)}"


def test_queries_use_only_labels_the_series_have(exported: dict[str, set[str]]) -> None:
    dashboard = load()
    available = set.union(*exported.values()) | TARGET_LABELS
    assert "layer" in available
    for where, expr in queries(dashboard):
        assert label_names(expr) <= available, f"{where}: {expr}"
    for name, _selector, label in label_values_variables(dashboard):
        assert label in available, f"variable {name} lists values of {label!r}"


def test_legends_name_labels_the_query_keeps() -> None:
    """A legend's ``{{label}}`` is one its query's ``sum by (...)`` keeps, or it shows blank."""
    for panel in all_panels(load()):
        for target in panel.get("targets", []):
            legend = set(_LEGEND.findall(target.get("legendFormat", "")))
            kept = {
                name.strip()
                for grouping in _BY.findall(_STRING.sub('""', target["expr"]))
                for name in grouping.split(",")
            }
            assert legend <= kept, f"{panel['title']!r}: legend {legend}, query keeps {kept}"


def test_the_checks_catch_a_wrong_or_a_missing_metric(exported: dict[str, set[str]]) -> None:
    """The comparisons above fail for a dashboard that drifts from the exporter."""
    dashboard = load()
    misspelt = copy.deepcopy(dashboard)
    target = next(p for p in all_panels(misspelt) if p.get("targets"))["targets"][0]
    target["expr"] = target["expr"].replace(
        "channels_valkey_messages_sent_total", "channels_valkey_messages_send_total"
    )
    assert "channels_valkey_messages_send_total" in missing_from_exporter(misspelt, exported)

    without_drops = copy.deepcopy(dashboard)
    for panel in all_panels(without_drops):
        panel["targets"] = [
            t for t in panel.get("targets", []) if "dropped_from_buffers" not in t["expr"]
        ]
    assert "channels_valkey_dropped_from_buffers_total" in not_on_any_panel(without_drops, exported)


# --------------------------------------------------------------------------
# The shape Grafana imports
# --------------------------------------------------------------------------


def test_dashboard_shape() -> None:
    dashboard = load()
    assert dashboard["title"]
    assert dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 39

    panels = list(all_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"

    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["title"]
        assert panel.get("description"), f"{panel['title']}: no description"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: refIds repeat"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty query"
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    boxes = []
    for panel in all_panels(load()):
        pos = panel["gridPos"]
        assert min(pos["w"], pos["h"]) > 0, f"{panel['title']}: empty"
        assert min(pos["x"], pos["y"]) >= 0, f"{panel['title']}: off the grid"
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']}: wider than the grid"
        boxes.append((panel["title"], pos))
    for i, (title, a) in enumerate(boxes):
        for other, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{title!r} overlaps {other!r}"


def test_variables() -> None:
    dashboard = load()
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["layer"]["type"] == "query"
    layer_query = variables["layer"]["query"]
    assert "channels_valkey_messages_sent_total" in str(layer_query)
    assert str(layer_query).rstrip().endswith(", layer)")

    used: set[str] = set()
    for _where, expr in queries(dashboard):
        used |= variables_used(expr)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            used |= variables_used(json.dumps(variable["query"]))
            used |= variables_used(variable["datasource"]["uid"])
    for panel in all_panels(dashboard):
        if "datasource" in panel:
            used |= variables_used(panel["datasource"]["uid"])
    assert {"layer", "datasource"} <= used
    assert used <= set(variables), f"undefined: {sorted(used - set(variables))}"

"""Checks of the deploy artifacts that no single tool makes (run by
.ci/deploy-check, inside its virtual environment, with promtool on PATH):

- the PrometheusRule carries exactly the groups of deploy/prometheus/rules.yml
  (which promtool checks and unit-tests);
- the ServiceMonitor and PrometheusRule conform to prometheus-operator's CRD
  schemas (pydantic models generated from them, cloudcoil): types are
  checked, and a field the schema does not know is an error;
- the Kubernetes objects refer to each other by names that exist (Service
  selectors and ports, the StatefulSet's Services, ConfigMap and Secret);
- every PromQL expression of the Grafana dashboard parses (promtool), and
  its panels have distinct ids, fit the grid without overlapping and query
  the dashboard's datasource variable.
"""

import json
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
errors = []


def fail(msg):
    errors.append(msg)


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_objects():
    objs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_all(path):
            objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


def check_rule_copy(objs):
    rule = objs[("PrometheusRule", "keymeter")]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    if rule["spec"] != rules:
        fail("deploy/k8s/prometheusrule.yaml: spec differs from deploy/prometheus/rules.yml")


def unknown_fields(given, kept, path="$"):
    """Paths present in `given` that the model dropped from `kept`."""
    if isinstance(given, dict):
        out = []
        for k, v in given.items():
            if not isinstance(kept, dict) or k not in kept:
                out.append(f"{path}.{k}")
            else:
                out += unknown_fields(v, kept[k], f"{path}.{k}")
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (g, k) in enumerate(zip(given, kept)) for p in unknown_fields(g, k, f"{path}[{i}]")]
    return []


def check_crds(objs):
    for (kind, name), model in [
        (("ServiceMonitor", "keymeter"), monitoring.ServiceMonitor),
        (("PrometheusRule", "keymeter"), monitoring.PrometheusRule),
    ]:
        doc = objs[(kind, name)]
        try:
            parsed = model.model_validate(doc)
        except Exception as e:  # pydantic's ValidationError names every field
            fail(f"{kind}/{name}: {e}")
            continue
        kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        for p in unknown_fields(doc, kept):
            fail(f"{kind}/{name}: field not in the CRD schema: {p}")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_references(objs):
    sts = objs[("StatefulSet", "keymeter")]
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    if not selects(sts["spec"]["selector"]["matchLabels"], pod_labels):
        fail("StatefulSet selector does not select its own pods")
    headless = objs.get(("Service", sts["spec"]["serviceName"]))
    if not headless or headless["spec"].get("clusterIP") != "None":
        fail("StatefulSet serviceName is not a headless Service")
    for (kind, name), o in objs.items():
        if kind == "Service":
            if not selects(o["spec"]["selector"], pod_labels):
                fail(f"Service/{name} selects no keymeter pod")
            for p in o["spec"]["ports"]:
                if p["targetPort"] not in ports:
                    fail(f"Service/{name}: targetPort {p['targetPort']} is not a container port")
        if kind in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = o["spec"].get("selector", o["spec"].get("podSelector"))["matchLabels"]
            if not selects(sel, pod_labels):
                fail(f"{kind}/{name} selects no keymeter pod")
    for v in pod["spec"]["volumes"]:
        if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in objs:
            fail(f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
    for c in pod["spec"]["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = objs.get(("Secret", ref["name"]))
                if not secret or ref["key"] not in secret.get("stringData", {}):
                    fail(f"env {e['name']}: no key {ref['key']} in Secret {ref['name']}")
    monitor = objs[("ServiceMonitor", "keymeter")]
    scraped = [
        o for (kind, _), o in objs.items()
        if kind == "Service" and selects(monitor["spec"]["selector"]["matchLabels"], o["metadata"]["labels"])
    ]
    if len(scraped) != 1:
        fail(f"the ServiceMonitor selects {len(scraped)} Services, not the metrics Service alone")
    elif scraped[0]["metadata"]["labels"].get(monitor["spec"]["jobLabel"]) != "keymeter":
        fail('the ServiceMonitor\'s jobLabel does not make job="keymeter", which the rules expect')
    else:
        names = {p["name"] for p in scraped[0]["spec"]["ports"]}
        for ep in monitor["spec"]["endpoints"]:
            if ep["port"] not in names:
                fail(f"ServiceMonitor endpoint port {ep['port']} is not a port of the metrics Service")


def dashboard_exprs():
    dash = json.loads((DEPLOY / "grafana" / "keymeter.json").read_text())
    out = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                out.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash)
    return out


def check_dashboard_promql():
    exprs = dashboard_exprs()
    if len(exprs) < 20:
        fail(f"the dashboard holds only {len(exprs)} queries")
    # Grafana's variables, as Prometheus would see them after substitution.
    subst = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$instance": ".*"}
    rules = []
    for i, e in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        if "$" in re.sub(r"\{\{.*?\}\}", "", e):
            fail(f"dashboard query {i} uses an unknown variable: {e}")
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    pathlib.Path(f.name).unlink()
    if r.returncode != 0:
        fail("dashboard PromQL:\n" + r.stdout + r.stderr)
    else:
        print(f"dashboard: {len(exprs)} PromQL queries parse")


def check_dashboard_layout():
    dash = json.loads((DEPLOY / "grafana" / "keymeter.json").read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    if len(ids) != len(set(ids)):
        fail("dashboard: panel ids repeat")
    cells = {}
    overlaps = set()
    for p in panels:
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            fail(f"dashboard: panel {p['title']!r} is outside the 24 columns")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    overlaps.add((cells[(x, y)], p["title"]))
                cells[(x, y)] = p["title"]
        for t in p.get("targets", []):
            if t.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
                fail(f"dashboard: panel {p['title']!r} does not query the $datasource variable")
    for a, b in sorted(overlaps):
        fail(f"dashboard: panels {a!r} and {b!r} overlap")
    names = {v["name"] for v in dash["templating"]["list"]}
    if names != {"datasource", "instance"}:
        fail(f"dashboard: variables {sorted(names)}, expected datasource and instance")


def main():
    objs = k8s_objects()
    check_rule_copy(objs)
    check_crds(objs)
    check_references(objs)
    check_dashboard_promql()
    check_dashboard_layout()
    for e in errors:
        print("deploy check:", e, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("deploy/k8s: PrometheusRule matches rules.yml; ServiceMonitor and PrometheusRule fit the CRD schemas; references resolve")


main()

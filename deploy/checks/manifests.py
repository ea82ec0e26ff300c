"""Checks on kallm's deployment files that schema validation alone cannot make.

Used by scripts/check-deploy.sh; each subcommand prints what it checked and exits 1 with
one line per problem.

    render RENDERED OUTDIR CHART [VALUES]   (needs PyYAML; run with the tools venv)
        Split `helm template` output: built-in kinds go to OUTDIR/builtin.yaml for
        kubernetes-validate; custom resources (ServiceMonitor), whose schemas
        kubernetes-validate does not ship, are checked here against the Service they
        select. Also checks the chart's promises (one replica, Recreate, drain time,
        non-root, read-only root with writable /data and /tmp, probes on /health, the
        env kallm needs), that what the values ask for is rendered where it belongs
        (CHART's values.yaml under the VALUES file: image, admin key, extra env and
        volumes, Ingress, NetworkPolicy by the connections it allows, the test pod
        outside kallm's selectors), and writes OUTDIR/kallm-config.json (kallm.toml +
        literal env).
    notes INSTALL_OUTPUT CHART [VALUES]   (needs PyYAML)
        The NOTES of a dry-run install: no secret from the values printed; the image, the
        admin-key Secret, the Ingress hosts and the kind/minikube load step named.
    image CHART ROOT         (needs PyYAML) the chart's appVersion is the version in
        ROOT/pyproject.toml, and the default image is a registry path the README names.
    kallm-config JSON        (stdlib + kallm; run with kallm's interpreter)
        Feed that kallm.toml and env to kallm's own settings loader: the chart's
        configuration must be accepted by the kallm it deploys.
    compose FILE             (needs PyYAML) docker-compose.yml keeps its promises.
    wheel WHEEL ROOT         (stdlib) the wheel the Dockerfile installs carries every
        package data file under ROOT/kallm and the `kallm` console script.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import netpol

# Custom resources the chart may render, each with its own check below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
REQUIRED_ENV = {
    "KALLM_HOST": "0.0.0.0",
    "KALLM_CONFIG": "/etc/kallm/kallm.toml",
    "KALLM_CACHE_FILE": "/data/cache.kallm",
    "KALLM_DB": "/data/kallm.db",
    "KALLM_LOG_JSON": "true",
}
MIN_GRACE_SECONDS = 35  # kallm drains for up to 30 s, then writes its snapshot
_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


class Problems:
    def __init__(self, what: str):
        self.what = what
        self.items: list[str] = []

    def check(self, ok: Any, message: str) -> bool:
        if not ok:
            self.items.append(message)
        return bool(ok)

    def finish(self, summary: str) -> None:
        if self.items:
            for item in self.items:
                print(f"  FAIL {self.what}: {item}")
            sys.exit(1)
        print(f"  ok   {self.what}: {summary}")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


def _is_builtin(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


# -- render -----------------------------------------------------------------------------


def _values(chart: str, values: str | None = None) -> dict[str, Any]:
    """The chart's values.yaml under a values file, merged as helm does (maps merge, other
    values replace, null removes)."""
    import yaml

    merged = yaml.safe_load((Path(chart) / "values.yaml").read_text())
    if values:
        merged = _merge(merged, yaml.safe_load(Path(values).read_text()) or {})
    return merged


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _chart_meta(chart: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((Path(chart) / "Chart.yaml").read_text())


def _image(values: dict[str, Any], chart: str) -> str:
    image = values["image"]
    return f"{image['repository']}:{image['tag'] or _chart_meta(chart)['appVersion']}"


def cmd_render(rendered: str, outdir: str, chart: str, values_file: str | None = None) -> None:
    import yaml

    text = Path(rendered).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    p = Problems(Path(rendered).name)

    builtin, custom = [], []
    for doc in docs:
        key = (doc.get("apiVersion", ""), doc.get("kind", ""))
        if _is_builtin(key[0]):
            builtin.append(doc)
        elif p.check(key in CUSTOM_KINDS, f"custom resource {key} has no check"):
            custom.append(doc)
    (out / "builtin.yaml").write_text(yaml.safe_dump_all(builtin, sort_keys=False))

    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    kallm = [d for d in by_kind.get("Deployment", []) if _has_container(d, "kallm")]
    valkey = [d for d in by_kind.get("Deployment", []) if _has_container(d, "valkey")]
    if not p.check(len(kallm) == 1, f"{len(kallm)} kallm Deployments, expected 1"):
        p.finish("")
    dep = kallm[0]
    services = [s for s in by_kind.get("Service", []) if _selects(s, dep)]
    if not p.check(len(services) == 1, f"{len(services)} Services select kallm, expected 1"):
        p.finish("")
    svc = services[0]
    p.check(len(by_kind.get("Deployment", [])) == len(kallm) + len(valkey), "unexpected Deployment")
    _check_deployment(p, dep, by_kind)
    _check_service(p, svc, dep)
    _check_shared_state(p, dep, by_kind, valkey)
    for sm in custom:
        _check_service_monitor(p, sm, svc)
    values = _values(chart, values_file)
    tests = [
        d
        for d in by_kind.get("Pod", [])
        if "test" in d["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    ]
    _check_image(p, values, _image(values, chart), dep, tests)
    _check_test_pods(p, tests, by_kind)
    _check_admin_key(p, values, dep, by_kind, text)
    _check_extras(p, values, dep)
    _check_ingress(p, values, by_kind, svc)
    _check_network_policy(p, values, by_kind, dep, valkey, tests)
    (out / "kallm-config.json").write_text(json.dumps(_kallm_config(dep, by_kind)))
    (out / "builtin.count").write_text(str(len(builtin)))
    kinds = ", ".join(sorted(f"{k}x{len(v)}" if len(v) > 1 else k for k, v in by_kind.items()))
    p.finish(f"{len(docs)} manifests ({kinds}); {len(custom)} custom checked here")


def _container(dep: dict) -> dict:
    containers = dep["spec"]["template"]["spec"]["containers"]
    return next((c for c in containers if c.get("name") == "kallm"), containers[0])


def _check_deployment(p: Problems, dep: dict, by_kind: dict[str, list[dict]]) -> None:
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = _container(dep)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    wait = _pre_stop_seconds(c)
    p.check(
        grace >= MIN_GRACE_SECONDS + wait,
        f"terminationGracePeriodSeconds {grace} < {MIN_GRACE_SECONDS} + preStop {wait}",
    )

    env = {e["name"]: e for e in c.get("env", [])}
    for name, value in REQUIRED_ENV.items():
        p.check(env.get(name, {}).get("value") == value, f"env {name} must be {value!r}")
    names = [e["name"] for e in c.get("env", [])]
    p.check(len(names) == len(set(names)), f"duplicate env names: {names}")

    pod_sc, c_sc = pod.get("securityContext", {}), c.get("securityContext", {})
    p.check(c_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, "must run as non-root")
    p.check(c_sc.get("readOnlyRootFilesystem") is True, "root filesystem must be read-only")
    p.check(c_sc.get("allowPrivilegeEscalation") is False, "privilege escalation must be off")

    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for path in ("/data", "/tmp"):
        m = mounts.get(path)
        if p.check(m, f"{path} is not mounted"):
            p.check(not m.get("readOnly"), f"{path} must be writable")
    tmp = volumes.get(mounts.get("/tmp", {}).get("name"), {})
    p.check("emptyDir" in tmp, "/tmp must be an emptyDir")
    data = volumes.get(mounts.get("/data", {}).get("name"), {})
    p.check("persistentVolumeClaim" in data or "emptyDir" in data, "/data: PVC or emptyDir")
    if "persistentVolumeClaim" in data:
        claim = data["persistentVolumeClaim"]["claimName"]
        pvcs = {d["metadata"]["name"] for d in by_kind.get("PersistentVolumeClaim", [])}
        if claim in pvcs:
            pvc = next(
                d for d in by_kind["PersistentVolumeClaim"] if d["metadata"]["name"] == claim
            )
            p.check(pvc["spec"].get("accessModes"), "PVC has no accessModes")
    config = mounts.get("/etc/kallm/kallm.toml")
    if p.check(config, "/etc/kallm/kallm.toml is not mounted"):
        cm_name = volumes.get(config["name"], {}).get("configMap", {}).get("name")
        cms = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
        p.check(
            cm_name in cms and config.get("subPath") in cms[cm_name].get("data", {}),
            "kallm.toml mount does not point at a rendered ConfigMap key",
        )
    keys_dir = env.get("KALLM_KEYS_DIR", {}).get("value")
    keys = mounts.get(keys_dir)
    if p.check(keys, f"KALLM_KEYS_DIR {keys_dir!r} is not a mounted directory"):
        p.check(
            keys.get("readOnly") and not keys.get("subPath"),
            "the virtual keys directory must be a read-only mount without subPath",
        )

    ports = {port.get("name"): port for port in c.get("ports", [])}
    p.check(ports.get("http", {}).get("containerPort") == 8080, "container port http/8080")
    for kind in ("livenessProbe", "readinessProbe"):
        get = c.get(kind, {}).get("httpGet", {})
        p.check(
            get.get("path") == "/health" and get.get("port") in ("http", 8080),
            f"{kind} must GET /health on the http port",
        )
    res = c.get("resources", {})
    p.check(res.get("requests") and res.get("limits"), "resources need requests and limits")

    secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
    for source in c.get("envFrom", []):
        name = source.get("secretRef", {}).get("name")
        for key in secrets.get(name, {}).get("data", {}):
            p.check(
                re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key),
                f"Secret {name} key {key!r} is not an environment variable name",
            )
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] in secrets:
            p.check(
                ref["key"] in secrets[ref["name"]].get("data", {}),
                f"env {e['name']}: key {ref['key']} not in Secret {ref['name']}",
            )


def _has_container(dep: dict, name: str) -> bool:
    return any(c.get("name") == name for c in dep["spec"]["template"]["spec"]["containers"])


def _selects(svc: dict, dep: dict) -> bool:
    selector = svc["spec"].get("selector", {})
    return (
        bool(selector) and selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    )


def _pre_stop_seconds(container: dict) -> int:
    """The preStop wait (``sleep N``), 0 without one."""
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if command and command[0] == "sleep" and str(command[-1]).isdigit():
        return int(command[-1])
    return 0


def _check_shared_state(
    p: Problems, dep: dict, by_kind: dict[str, list[dict]], valkey: list[dict]
) -> None:
    """One replica and Recreate without shared state; with it (KALLM_REDIS_URL): rolling
    updates, a PodDisruptionBudget below the pod count (none for one pod), a pod-local
    /data, KALLM_REPLICAS covering every pod, and the in-chart Valkey (if any) reachable
    where the URL says."""
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    c = _container(dep)
    env = {e["name"]: e for e in c.get("env", [])}
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if "KALLM_REDIS_URL" not in env:
        p.check(spec.get("replicas") == 1, f"replicas is {spec.get('replicas')}, must be 1")
        p.check(spec.get("strategy", {}).get("type") == "Recreate", "strategy must be Recreate")
        p.check(not hpas and not pdbs and not valkey, "HPA, PDB or Valkey without shared state")
        return
    strategy = spec.get("strategy", {})
    p.check(strategy.get("type") == "RollingUpdate", "shared state: strategy RollingUpdate")
    p.check(
        strategy.get("rollingUpdate", {}).get("maxUnavailable") == 0,
        "shared state: rolling updates must not take pods away first (maxUnavailable 0)",
    )
    p.check(_pre_stop_seconds(c) > 0, "shared state: a preStop wait before SIGTERM")
    pod_labels = spec["template"]["metadata"]["labels"]
    fewest = hpas[0]["spec"]["minReplicas"] if hpas else spec.get("replicas", 1)
    ours = [b for b in pdbs if b["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()]
    if fewest > 1:
        p.check(ours, "shared state: no PodDisruptionBudget selects the kallm pods")
    else:
        p.check(not ours, "a PodDisruptionBudget for a single pod would block every node drain")
    for pdb in ours:
        least = pdb["spec"].get("minAvailable")
        p.check(
            isinstance(least, str) or least < fewest,
            f"PodDisruptionBudget minAvailable {least} >= {fewest} pods: no node could be drained",
        )
    most = spec.get("replicas")
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        p.check(
            target["kind"] == "Deployment" and target["name"] == dep["metadata"]["name"],
            "HPA does not scale the kallm Deployment",
        )
        p.check("replicas" not in spec, "with an HPA the Deployment must not set replicas")
        most = hpa["spec"]["maxReplicas"]
    p.check(most is not None, "neither replicas nor an HPA")
    replicas = env.get("KALLM_REPLICAS", {}).get("value")
    p.check(
        replicas is not None and most is not None and int(replicas) >= int(most),
        f"KALLM_REPLICAS {replicas} must cover every pod ({most})",
    )
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    data = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == "/data"), {})
    p.check(
        "emptyDir" in volumes.get(data.get("name"), {}),
        "shared state: /data must be each pod's own emptyDir (no ReadWriteOnce PVC shared)",
    )
    p.check(not by_kind.get("PersistentVolumeClaim"), "shared state: no PVC")
    url = env["KALLM_REDIS_URL"]
    if "value" in url:
        names = {s["metadata"]["name"] for s in by_kind.get("Service", [])}
        host = url["value"].split("://", 1)[1].split(":", 1)[0]
        p.check(host in names, f"KALLM_REDIS_URL host {host} is no rendered Service")
        p.check(len(valkey) == 1, "a literal KALLM_REDIS_URL without the in-chart Valkey")
    for vk in valkey:
        vc = next(x for x in vk["spec"]["template"]["spec"]["containers"] if x["name"] == "valkey")
        vsc, vpod = vc.get("securityContext", {}), vk["spec"]["template"]["spec"]
        p.check(vpod.get("securityContext", {}).get("runAsNonRoot") is True, "Valkey: non-root")
        p.check(vsc.get("readOnlyRootFilesystem") is True, "Valkey: read-only root")
        p.check("volatile-lru" in vc.get("args", []), "Valkey must evict only what has a TTL")
        p.check(any(_selects(s, vk) for s in by_kind.get("Service", [])), "no Service for Valkey")
        p.check(not _selects_any(vk, by_kind), "a kallm selector picks the Valkey pod")


def _selects_any(vk: dict, by_kind: dict[str, list[dict]]) -> bool:
    """Whether a kallm Service or PodDisruptionBudget would also select the Valkey pod."""
    labels = vk["spec"]["template"]["metadata"]["labels"]
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items():
            return True
    return any(
        s["spec"].get("selector", {}).items() <= labels.items()
        and "redis" not in {port.get("name") for port in s["spec"]["ports"]}
        for s in by_kind.get("Service", [])
    )


# -- what the values ask for ------------------------------------------------------------


def _check_image(
    p: Problems, values: dict[str, Any], want: str, dep: dict, tests: list[dict]
) -> None:
    policy = values["image"]["pullPolicy"]
    pods = [(f"Deployment {dep['metadata']['name']}", _container(dep))]
    pods += [(f"Pod {t['metadata']['name']}", t["spec"]["containers"][0]) for t in tests]
    for where, c in pods:
        p.check(c.get("image") == want, f"{where}: image {c.get('image')!r}, values ask {want!r}")
        p.check(
            c.get("imagePullPolicy") == policy,
            f"{where}: imagePullPolicy {c.get('imagePullPolicy')}, values ask {policy}",
        )


def _check_test_pods(p: Problems, tests: list[dict], by_kind: dict[str, list[dict]]) -> None:
    """The `helm test` pod is no kallm pod: no kallm selector may pick it."""
    p.check(tests, "no `helm test` pod")
    selectors = [
        (f"Service {s['metadata']['name']}", s["spec"].get("selector"))
        for s in by_kind.get("Service", [])
    ]
    selectors += [
        (f"PodDisruptionBudget {b['metadata']['name']}", b["spec"]["selector"].get("matchLabels"))
        for b in by_kind.get("PodDisruptionBudget", [])
    ]
    for test in tests:
        labels = test["metadata"].get("labels", {})
        for name, selector in selectors:
            p.check(
                not selector or not netpol.selects({"matchLabels": selector}, labels),
                f"{name} selects the test pod",
            )


def _check_admin_key(
    p: Problems, values: dict[str, Any], dep: dict, by_kind: dict[str, list[dict]], text: str
) -> None:
    admin = values["adminKey"]
    env = {e["name"]: e for e in _container(dep).get("env", [])}
    ref = env.get("KALLM_ADMIN_KEY", {}).get("valueFrom", {}).get("secretKeyRef")
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    if admin["value"]:
        if p.check(ref, "adminKey.value: KALLM_ADMIN_KEY is not read from a Secret"):
            data = secrets.get(ref["name"], {}).get("data", {})
            p.check(
                ref["key"] in data
                and base64.b64decode(data[ref["key"]]).decode() == str(admin["value"]),
                f"Secret {ref['name']} does not hold adminKey.value under {ref['key']}",
            )
        p.check(str(admin["value"]) not in text, "adminKey.value appears in the manifests")
        p.check("checksum/admin-key" in annotations, "no checksum/admin-key: no roll on change")
    elif admin["existingSecret"]:
        want = {"name": admin["existingSecret"], "key": admin["secretKey"]}
        p.check(ref == want, f"KALLM_ADMIN_KEY from {ref}, values ask {want}")
        p.check(admin["existingSecret"] not in secrets, "the chart renders adminKey.existingSecret")
    else:
        p.check("KALLM_ADMIN_KEY" not in env, "KALLM_ADMIN_KEY set without adminKey")


def _check_extras(p: Problems, values: dict[str, Any], dep: dict) -> None:
    pod, c = dep["spec"]["template"]["spec"], _container(dep)
    for field, items, rendered in (
        ("extraEnv", values["extraEnv"], c.get("env", [])),
        ("extraEnvFrom", values["extraEnvFrom"], c.get("envFrom", [])),
        ("extraVolumes", values["extraVolumes"], pod.get("volumes", [])),
        ("extraVolumeMounts", values["extraVolumeMounts"], c.get("volumeMounts", [])),
    ):
        for item in items:
            p.check(item in rendered, f"{field}: {item} is not rendered as given")
    names = [v["name"] for v in pod.get("volumes", [])]
    p.check(len(names) == len(set(names)), f"duplicate volume names: {names}")
    paths = [m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])]
    p.check(len(paths) == len(set(paths)), f"two mounts at one path: {paths}")
    for m in c.get("volumeMounts", []):
        p.check(m["name"] in names, f"volumeMount {m['name']} names no volume")


def _check_ingress(
    p: Problems, values: dict[str, Any], by_kind: dict[str, list[dict]], svc: dict
) -> None:
    want, ingresses = values["ingress"], by_kind.get("Ingress", [])
    if not want["enabled"]:
        p.check(not ingresses, "an Ingress without ingress.enabled")
        return
    if not p.check(len(ingresses) == 1, f"{len(ingresses)} Ingresses, expected 1"):
        return
    ing = ingresses[0]
    spec = ing["spec"]
    p.check(
        spec.get("ingressClassName") == (want["className"] or None),
        f"ingressClassName {spec.get('ingressClassName')!r}, values ask {want['className']!r}",
    )
    p.check(
        ing["metadata"].get("annotations", {}) == want["annotations"],
        "Ingress annotations differ from ingress.annotations",
    )
    routes = {
        (rule.get("host", ""), path["path"], path["pathType"]): path["backend"]
        for rule in spec.get("rules", [])
        for path in rule["http"]["paths"]
    }
    asked = {
        (host.get("host") or "", path["path"], path.get("pathType", "Prefix"))
        for host in want["hosts"]
        for path in host.get("paths") or [{"path": "/"}]
    }
    p.check(set(routes) == asked, f"Ingress routes {sorted(routes)}, values ask {sorted(asked)}")
    svc_ports = {port.get("name") for port in svc["spec"]["ports"]}
    svc_numbers = {port["port"] for port in svc["spec"]["ports"]}
    for route, backend in routes.items():
        target = backend.get("service", {})
        port = target.get("port", {})
        p.check(
            target.get("name") == svc["metadata"]["name"]
            and (port.get("name") in svc_ports or port.get("number") in svc_numbers),
            f"Ingress route {route} does not lead to the kallm Service's port",
        )
    p.check(spec.get("tls", []) == want["tls"], "Ingress tls differs from ingress.tls")
    hosts = {rule.get("host") for rule in spec.get("rules", [])}
    for tls in spec.get("tls", []):
        for host in tls.get("hosts", []):
            p.check(host in hosts, f"TLS host {host} has no rule")


def _url_port(url: str) -> int | None:
    parts = urlsplit(url)
    if parts.port:
        return parts.port
    return {"https": 443, "http": 80, "redis": 6379, "rediss": 6379}.get(parts.scheme)


def _check_network_policy(
    p: Problems,
    values: dict[str, Any],
    by_kind: dict[str, list[dict]],
    dep: dict,
    valkey: list[dict],
    tests: list[dict],
) -> None:
    """The NetworkPolicies judged by the connections they allow."""
    want, policies = values["networkPolicy"], by_kind.get("NetworkPolicy", [])
    if not want["enabled"]:
        p.check(not policies, "a NetworkPolicy without networkPolicy.enabled")
        return
    ns = dep["metadata"]["namespace"]
    ports = {port["name"]: port["containerPort"] for port in _container(dep).get("ports", [])}
    kallm = netpol.pod(ns, dep["spec"]["template"]["metadata"]["labels"], ports)
    p.check(any(netpol.governs(np, kallm) for np in policies), "no NetworkPolicy selects kallm")

    def expect(src, dst, port: int, allowed: bool, why: str, protocol: str = "TCP") -> None:
        got = netpol.allows(policies, src, dst, port, protocol)
        p.check(
            got == allowed,
            f"NetworkPolicy {'allows' if got else 'denies'} {src} -> {dst}:{port}/{protocol}"
            f" ({why}: expected {'allowed' if allowed else 'denied'})",
        )

    # Who reaches kallm's port.
    opened = bool(want["ingressFrom"] or want["extraIngress"])
    neighbour = netpol.pod(ns, {"app": "client"})
    expect(neighbour, kallm, 8080, want["allowSameNamespace"], "networkPolicy.allowSameNamespace")
    for test in tests:
        tester = netpol.pod(ns, test["metadata"]["labels"])
        held = any(netpol.governs(np, tester) for np in policies)
        p.check(not held, "a NetworkPolicy selects the helm test pod")
        expect(tester, kallm, 8080, True, "the helm test pod")
    for peer in want["ingressFrom"]:
        expect(netpol.member(peer, ns), kallm, 8080, True, "networkPolicy.ingressFrom")
    scraped = values["metrics"]["serviceMonitor"]["enabled"]
    for peer in want["metricsFrom"]:
        scraper = netpol.member(peer, ns)
        if scraped or (scraper.namespace != ns and not opened):
            expect(scraper, kallm, 8080, scraped, "Prometheus, with the ServiceMonitor on")
    for rule in want["extraIngress"]:
        peers = rule.get("from") or [{"ipBlock": {"cidr": "198.51.100.0/24"}}]
        port = (rule.get("ports") or [{}])[0].get("port", 8080)
        expect(netpol.member(peers[0], ns), kallm, int(ports.get(port, port)), True, "extraIngress")
    if not opened:
        expect(netpol.pod("elsewhere", {"app": "client"}), kallm, 8080, False, "another namespace")
        expect(netpol.address("198.51.100.7"), kallm, 8080, False, "an outside address")

    # What kallm reaches.
    dns = netpol.pod("kube-system", {"k8s-app": "kube-dns"})
    expect(kallm, dns, 53, True, "DNS", "UDP")
    expect(kallm, dns, 53, True, "DNS", "TCP")
    outside = netpol.address("203.0.113.10")
    upstream = _url_port(values["upstream"]["baseUrl"]) if values["upstream"]["baseUrl"] else None
    expect(kallm, outside, 443, want["allowHttps"] or upstream == 443, "networkPolicy.allowHttps")
    if upstream:
        expect(kallm, outside, upstream, True, "the port of upstream.baseUrl")
    redis = values["redis"]
    redis_port = None
    if redis["url"]:
        redis_port = _url_port(redis["url"])
    elif redis["existingSecret"]:
        redis_port = int(want["redisPort"])
    if redis_port:
        expect(kallm, outside, redis_port, True, "the Redis of redis.url / existingSecret")
    for vk in valkey:
        server = netpol.pod(ns, vk["spec"]["template"]["metadata"]["labels"], {"redis": 6379})
        expect(kallm, server, 6379, True, "kallm to the in-chart Valkey")
        expect(neighbour, server, 6379, False, "only kallm reaches Valkey")
        stranger = netpol.pod("elsewhere", kallm.labels)
        expect(stranger, server, 6379, False, "kallm-like pods of another namespace")
        expect(server, outside, 443, False, "Valkey reaches nothing")
    for rule in want["extraEgress"]:
        peers = rule.get("to") or [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
        port = (rule.get("ports") or [{"port": 1}])[0]
        expect(
            kallm,
            netpol.member(peers[0], ns),
            int(port["port"]),
            True,
            "networkPolicy.extraEgress",
            port.get("protocol", "TCP"),
        )
    if not want["extraEgress"]:
        for port in (5432, 6379):
            if port not in {upstream, redis_port}:
                expect(kallm, outside, port, False, "a port nothing asked for")


def _check_service(p: Problems, svc: dict, dep: dict) -> None:
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = svc["spec"].get("selector", {})
    p.check(
        selector and selector.items() <= pod_labels.items(),
        "Service selector does not select the kallm pod",
    )
    p.check(
        selector.items() <= dep["spec"]["selector"]["matchLabels"].items(),
        "Service selector differs from the Deployment selector",
    )
    container_ports = {port.get("name") for port in _container(dep).get("ports", [])}
    for port in svc["spec"]["ports"]:
        target = port.get("targetPort")
        p.check(
            target in container_ports or target == 8080,
            f"Service port {port.get('name')} targets {target}, not a container port",
        )


def _check_service_monitor(p: Problems, sm: dict, svc: dict) -> None:
    spec = sm.get("spec", {})
    known = {
        "selector",
        "endpoints",
        "namespaceSelector",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
        "targetLimit",
        "attachMetadata",
    }
    p.check(set(spec) <= known, f"ServiceMonitor: unknown spec fields {set(spec) - known}")
    match = spec.get("selector", {}).get("matchLabels", {})
    p.check(
        match and match.items() <= svc["metadata"].get("labels", {}).items(),
        "ServiceMonitor selector does not match the Service's labels",
    )
    names = spec.get("namespaceSelector", {}).get("matchNames")
    svc_ns = svc["metadata"].get("namespace")
    p.check(
        names is None or svc_ns in names,
        f"ServiceMonitor namespaceSelector {names} misses the Service namespace {svc_ns}",
    )
    svc_ports = {port.get("name") for port in svc["spec"]["ports"]}
    endpoints = spec.get("endpoints") or []
    p.check(endpoints, "ServiceMonitor has no endpoints")
    for ep in endpoints:
        p.check(ep.get("port") in svc_ports, f"ServiceMonitor port {ep.get('port')} not on Service")
        p.check(str(ep.get("path", "/metrics")).startswith("/"), "ServiceMonitor path needs a /")
        interval, timeout = str(ep.get("interval", "30s")), str(ep.get("scrapeTimeout", "10s"))
        interval_ok = p.check(_DURATION.match(interval), f"interval {interval!r}: not a duration")
        timeout_ok = p.check(_DURATION.match(timeout), f"scrapeTimeout {timeout!r}: not a duration")
        if interval_ok and timeout_ok:
            p.check(_seconds(timeout) <= _seconds(interval), "scrapeTimeout exceeds interval")


def _kallm_config(dep: dict, by_kind: dict[str, list[dict]]) -> dict[str, Any]:
    """kallm.toml and the environment kallm would see (literal values, and keys of the
    Secrets the chart renders, through envFrom or secretKeyRef)."""
    c = _container(dep)
    secrets = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("Secret", [])}
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        data = secrets.get(source.get("secretRef", {}).get("name"), {})
        for key, value in data.items():
            env[source.get("prefix", "") + key] = base64.b64decode(value).decode()
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        if "value" in e:
            env[e["name"]] = e["value"]
        elif ref.get("key") in secrets.get(ref.get("name"), {}):
            env[e["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
    toml = ""
    for cm in by_kind.get("ConfigMap", []):
        toml = cm.get("data", {}).get("kallm.toml", toml)
    return {"toml": toml, "env": env}


# -- notes, image ------------------------------------------------------------------------


def cmd_notes(install_output: str, chart: str, values_file: str | None = None) -> None:
    values = _values(chart, values_file)
    text = Path(install_output).read_text()
    p = Problems(f"NOTES ({Path(values_file).name if values_file else 'default values'})")
    notes = text.split("\nNOTES:\n", 1)[1] if "\nNOTES:\n" in text else ""
    if not p.check(notes, "no NOTES in the dry-run install"):
        p.finish("")
    secrets = {"adminKey.value": values["adminKey"]["value"]}
    secrets |= {f"providerKeys.values.{k}": v for k, v in values["providerKeys"]["values"].items()}
    if values["redis"]["url"]:
        secrets["the password in redis.url"] = urlsplit(values["redis"]["url"]).password
    for name, secret in secrets.items():
        p.check(not secret or str(secret) not in notes, f"NOTES print {name}")
    image = _image(values, chart)
    p.check(image in notes, f"NOTES do not name the image {image}")
    admin = values["adminKey"]
    secret = admin["existingSecret"] or (admin["value"] and "-admin-key")
    if secret:
        p.check(secret in notes, "NOTES do not name the admin-key Secret")
    if values["ingress"]["enabled"]:
        for host in values["ingress"]["hosts"]:
            p.check(host.get("host", "") in notes, f"NOTES do not name host {host.get('host')}")
    if values["image"]["pullPolicy"] == "Never":
        p.check(f"kind load docker-image {image}" in notes, "NOTES do not say to load the image")
    p.finish(f"no secret printed ({len([s for s in secrets.values() if s])} in the values)")


def cmd_image(chart: str, root: str) -> None:
    import tomllib

    meta, values = _chart_meta(chart), _values(chart)
    p = Problems("image")
    version = tomllib.loads((Path(root) / "pyproject.toml").read_text())["project"]["version"]
    p.check(
        meta["appVersion"] == version,
        f"Chart appVersion {meta['appVersion']} is not kallm's version {version}",
    )
    repository, tag = values["image"]["repository"], values["image"]["tag"]
    registry = repository.split("/")[0]
    p.check(
        repository.count("/") >= 2 and ("." in registry or ":" in registry),
        f"image.repository {repository!r} names no registry (registry/owner/name)",
    )
    p.check(tag == "", f"image.tag {tag!r}: leave it empty so it follows appVersion")
    for doc in ("README.md", "deploy/README.md"):
        p.check(
            f"{repository}:{version}" in (Path(root) / doc).read_text(),
            f"{doc} does not name the image {repository}:{version}",
        )
    p.finish(f"{repository}:{meta['appVersion']} (appVersion = pyproject version, named in README)")


# -- kallm-config -----------------------------------------------------------------------


def cmd_kallm_config(path: str) -> None:
    from kallm.config import load_settings
    from kallm.errors import ConfigError

    spec = json.loads(Path(path).read_text())
    p = Problems(f"kallm settings from {Path(path).parent.name}")
    with tempfile.TemporaryDirectory() as tmp:
        toml = Path(tmp) / "kallm.toml"
        toml.write_text(spec["toml"], encoding="utf-8")
        environ = {**spec["env"], "KALLM_CONFIG": str(toml)}
        try:
            loaded = load_settings(environ=environ)
        except ConfigError as exc:
            p.check(False, f"kallm rejects the chart's configuration: {exc.message}")
            p.finish("")
            return
    s = loaded.settings
    p.check(s.host == "0.0.0.0", f"host {s.host}")
    p.check(s.port == 8080, f"port {s.port}")
    p.check(s.log_json is True, "log_json is off")
    p.check(str(s.cache_file) == "/data/cache.kallm", f"cache_file {s.cache_file}")
    if hasattr(s, "db_path"):
        p.check(str(s.db_path) == "/data/kallm.db", f"db_path {s.db_path}")
    if hasattr(s, "keys_dir"):
        p.check(str(s.keys_dir) == spec["env"].get("KALLM_KEYS_DIR"), f"keys_dir {s.keys_dir}")
    if "OPENAI_API_KEY" in spec["env"]:
        p.check(s.upstream_api_key == spec["env"]["OPENAI_API_KEY"], "OPENAI_API_KEY unused")
    if "KALLM_ADMIN_KEY" in spec["env"]:
        p.check(s.admin_key == spec["env"]["KALLM_ADMIN_KEY"], "KALLM_ADMIN_KEY unused")
    for provider in getattr(s, "providers", ()):
        if provider.api_key_env in spec["env"]:
            p.check(provider.api_key, f"provider {provider.name}: {provider.api_key_env} unused")
    from_file = sorted(f for f, src in loaded.sources.items() if src.startswith("file"))
    providers = [prov.name for prov in getattr(s, "providers", ())]
    p.finish(
        f"accepted by kallm (from kallm.toml: {', '.join(from_file) or 'nothing'}"
        + (f"; providers {', '.join(providers)}" if providers else "")
        + ")"
    )


# -- compose ----------------------------------------------------------------------------


def cmd_compose(path: str) -> None:
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    p = Problems(Path(path).name)
    svc = (doc.get("services") or {}).get("kallm")
    if not p.check(svc, "no kallm service"):
        p.finish("")
    p.check(svc.get("build") or svc.get("image"), "kallm: neither build nor image")
    p.check(
        any(str(port).endswith(":8080") or str(port) == "8080" for port in svc.get("ports", [])),
        "kallm: port 8080 not published",
    )
    env_files = svc.get("env_file", [])
    env_files = [env_files] if isinstance(env_files, str | dict) else env_files
    p.check(
        any((f if isinstance(f, str) else f.get("path")) == ".env" for f in env_files),
        "kallm: env_file .env missing",
    )
    env = svc.get("environment", {})
    p.check(env.get("KALLM_HOST") == "0.0.0.0", "kallm: KALLM_HOST must be 0.0.0.0")
    for name in ("KALLM_CACHE_FILE", "KALLM_DB"):
        p.check(str(env.get(name, "")).startswith("/data/"), f"kallm: {name} must be in /data")
    named = set((doc.get("volumes") or {}).keys())
    data = [
        str(v).split(":")[0] for v in svc.get("volumes", []) if str(v).split(":")[1:2] == ["/data"]
    ]
    p.check(data and data[0] in named, "kallm: /data must be a named volume")
    hc = svc.get("healthcheck", {})
    p.check(
        hc.get("test") and "/health" in " ".join(map(str, hc["test"])),
        "kallm: healthcheck must probe /health",
    )
    grace = str(svc.get("stop_grace_period", "10s"))
    p.check(
        _DURATION.match(grace) and _seconds(grace) >= MIN_GRACE_SECONDS,
        f"kallm: stop_grace_period {grace} < {MIN_GRACE_SECONDS}s",
    )
    p.finish(
        "kallm service: port 8080, .env, named /data volume, healthcheck, "
        f"stop_grace_period {grace}"
    )


# -- wheel ------------------------------------------------------------------------------


def cmd_wheel(wheel: str, root: str) -> None:
    p = Problems(Path(wheel).name)
    names = set(zipfile.ZipFile(wheel).namelist())
    pkg = Path(root) / "kallm"
    wanted = sorted(
        f.relative_to(root).as_posix()
        for d in (pkg / "embed" / "data", pkg / "data")
        for f in d.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
    )
    for name in wanted:
        p.check(name in names, f"missing package data {name}")
    p.check("kallm/cli/app.py" in names, "missing kallm/cli/app.py")
    entry = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
    p.check(
        entry and "kallm = kallm.cli.app:main" in zipfile.ZipFile(wheel).read(entry).decode(),
        "no `kallm` console script",
    )
    p.finish(f"{len(names)} files, all {len(wanted)} package data files, `kallm` script")


def main(argv: list[str]) -> None:
    commands = {  # name: (function, fewest arguments, most arguments)
        "render": (cmd_render, 3, 4),
        "notes": (cmd_notes, 2, 3),
        "image": (cmd_image, 2, 2),
        "kallm-config": (cmd_kallm_config, 1, 1),
        "compose": (cmd_compose, 1, 1),
        "wheel": (cmd_wheel, 2, 2),
    }
    if not argv or argv[0] not in commands:
        sys.exit(__doc__)
    _, fewest, most = commands[argv[0]]
    if not fewest <= len(argv) - 1 <= most:
        sys.exit(__doc__)
    func = commands[argv[0]][0]
    func(*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])

"""Which connections a set of NetworkPolicies allows, by Kubernetes' rules.

Enough of the rules to check the chart's policies by outcome (who may reach kallm, what
kallm may reach) rather than by their shape: podSelector / namespaceSelector / ipBlock
peers, label selectors with matchLabels and matchExpressions, ports by number, range
(endPort) or name, protocols, and policyTypes with their defaults. A pod no policy
selects (for a direction) is open in that direction; addresses outside the cluster carry
no policy. Used by manifests.py; stdlib only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NS_NAME = "kubernetes.io/metadata.name"  # the label every namespace carries


@dataclass(frozen=True)
class Endpoint:
    """A pod (its namespace, labels and named container ports) or an outside address."""

    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    ip: str | None = None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    def ns_labels(self) -> Mapping[str, str]:
        return {NS_NAME: self.namespace or "", **self.namespace_labels}

    def __str__(self) -> str:
        if self.ip:
            return self.ip
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return f"pod {{{labels}}} in {self.namespace}"


def pod(namespace: str, labels: Mapping[str, str], ports: Mapping[str, int] | None = None):
    return Endpoint(namespace=namespace, labels=dict(labels), ports=dict(ports or {}))


def address(ip: str) -> Endpoint:
    return Endpoint(ip=ip)


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector; an empty one selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def allows(
    policies: Iterable[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``src`` may open a connection to ``dst`` on ``port``."""
    policies = list(policies)
    return _admitted(policies, "Ingress", dst, src, port, protocol, dst) and _admitted(
        policies, "Egress", src, dst, port, protocol, dst
    )


def governs(policy: dict, endpoint: Endpoint) -> bool:
    """Whether ``policy`` selects the pod ``endpoint``."""
    return (
        endpoint.ip is None
        and policy["metadata"].get("namespace") == endpoint.namespace
        and selects(policy["spec"].get("podSelector"), endpoint.labels)
    )


def _types(policy: dict) -> list[str]:
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return spec["policyTypes"]
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def _admitted(
    policies: list[dict],
    direction: str,
    subject: Endpoint,
    other: Endpoint,
    port: int,
    protocol: str,
    target: Endpoint,
) -> bool:
    governing = [np for np in policies if governs(np, subject) and direction in _types(np)]
    if not governing:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for np in governing:
        for rule in np["spec"].get(rules_key) or []:
            if _port_ok(rule.get("ports"), port, protocol, target) and _peers_ok(
                rule.get(peers_key), other, np["metadata"].get("namespace")
            ):
                return True
    return False


def _port_ok(ports: list[dict] | None, port: int, protocol: str, target: Endpoint) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str) and not want.isdigit():
            if target.ports.get(want) == port:
                return True
        elif int(want) <= port <= int(p.get("endPort", want)):
            return True
    return False


def _peers_ok(peers: list[dict] | None, other: Endpoint, policy_ns: str | None) -> bool:
    if not peers:
        return True  # no `from`/`to`: every source or destination
    return any(_peer_ok(peer, other, policy_ns) for peer in peers)


def _peer_ok(peer: dict, other: Endpoint, policy_ns: str | None) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if other.ip is not None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.ns_labels()):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def member(peer: dict, policy_ns: str) -> Endpoint:
    """An endpoint the peer admits: labels that satisfy its selectors, an address in its
    ipBlock (outside its exceptions)."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        excluded = [ipaddress.ip_network(e) for e in block.get("except") or []]
        network = ipaddress.ip_network(block["cidr"])
        hosts = network.hosts() if network.num_addresses > 2 else iter(network)
        for ip in hosts:
            if not any(ip in e for e in excluded):
                return address(str(ip))
        raise ValueError(f"ipBlock {block} admits no address")
    if "namespaceSelector" in peer:
        ns_labels = _satisfying(peer["namespaceSelector"])
        namespace = ns_labels.pop(NS_NAME, "some-namespace")
    else:
        ns_labels, namespace = {}, policy_ns
    labels = _satisfying(peer.get("podSelector") or {})
    return Endpoint(namespace=namespace, labels=labels, namespace_labels=ns_labels)


def _satisfying(selector: Mapping[str, Any]) -> dict[str, str]:
    labels = dict(selector.get("matchLabels") or {})
    for expr in selector.get("matchExpressions") or []:
        if expr["operator"] == "In":
            labels[expr["key"]] = expr["values"][0]
        elif expr["operator"] == "Exists":
            labels[expr["key"]] = "x"
        elif expr["operator"] == "NotIn":
            labels.pop(expr["key"], None)
    return labels

"""What tidemark's rendered manifests must hold beyond the Kubernetes schemas.

Usage: policy.py RENDERED.yaml SCALEDOBJECTS.json
Checks every rule below, prints each violation with the object it is about,
exits 1 if any; writes the KEDA objects found (ScaledObjects, TriggerAuthentications) as JSON for the KEDA schema
check (k8s/tests/keda.mjs).

Rules (issue 11):
- no Secret in the rendered output (credentials live in a Secret created apart);
- every pod: runAsNonRoot, seccomp RuntimeDefault, no service account token;
  every container: no privilege escalation, read-only root filesystem,
  capabilities dropped (ALL), CPU and memory requests, a memory limit,
  readiness and liveness probes, an image with a registry and a pinned tag;
- tidemark's Deployments: a grace period above the 25 s drain, port `http`,
  a PodDisruptionBudget selecting their pods;
- workers are scaled by a KEDA ScaledObject on the `workers` group lag of
  every job stream the rendered config has (`tm:jobs`, or `tm:jobs:{0}` ..
  with `[queue] job_partitions`), one trigger each and none on anything else,
  with at least one replica kept;
- a default-deny NetworkPolicy; only coordinators take ingress from anywhere.
"""

import json
import sys
import tomllib

import yaml

DRAIN_SECS = 25
WORKER_GROUP = "workers"


def job_streams(objects):
    """The job streams of the config in the rendered `tidemark` ConfigMap
    (as src/keys.rs names them), or the defaults' when there is none."""
    config = {}
    for obj in objects:
        if obj["kind"] == "ConfigMap" and "tidemark.toml" in obj.get("data", {}):
            config = tomllib.loads(obj["data"]["tidemark.toml"])
    namespace = config.get("redis", {}).get("namespace", "tm")
    partitions = config.get("queue", {}).get("job_partitions", 1)
    if partitions == 1:
        return {f"{namespace}:jobs"}
    return {f"{namespace}:jobs:{{{i}}}" for i in range(partitions)}


def problems_of(objects):
    problems = []

    def say(obj, message):
        problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {message}")

    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)

    for obj in by_kind.get("Secret", []):
        say(obj, "a Secret in the manifests would reset real credentials on every apply")

    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    for obj in workloads:
        pod = obj["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            say(obj, "pod securityContext.runAsNonRoot must be true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            say(obj, "pod securityContext.seccompProfile.type must be RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            say(obj, "automountServiceAccountToken must be false (nothing here calls the Kubernetes API)")
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            where = f"container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                say(obj, f"{where}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                say(obj, f"{where}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                say(obj, f"{where}: capabilities.drop must include ALL")
            res = c.get("resources", {})
            for need in ("cpu", "memory"):
                if need not in res.get("requests", {}):
                    say(obj, f"{where}: resources.requests.{need} is missing")
            if "memory" not in res.get("limits", {}):
                say(obj, f"{where}: resources.limits.memory is missing")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    say(obj, f"{where}: {probe} is missing")
            image = c.get("image", "")
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            if "/" not in name or "." not in name.split("/")[0]:
                say(obj, f"{where}: image {image!r} names no registry")
            if not tag or tag == "latest":
                say(obj, f"{where}: image {image!r} must have a pinned tag, not latest or none")

    tidemark = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"].startswith("tidemark-")]
    pdbs = by_kind.get("PodDisruptionBudget", [])
    for d in tidemark:
        pod = d["spec"]["template"]["spec"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= DRAIN_SECS:
            say(d, f"terminationGracePeriodSeconds {grace} must be above the {DRAIN_SECS} s drain")
        ports = [p.get("name") for c in pod["containers"] for p in c.get("ports", [])]
        if "http" not in ports:
            say(d, "no port named http (probes and /metrics)")
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        covered = any(
            all(labels.get(k) == v for k, v in p["spec"]["selector"].get("matchLabels", {}).items())
            for p in pdbs
        )
        if not covered:
            say(d, "no PodDisruptionBudget selects its pods")

    scaled = by_kind.get("ScaledObject", [])
    workers = [d for d in tidemark if d["metadata"]["name"] == "tidemark-worker"]
    for w in workers:
        mine = [s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == w["metadata"]["name"]]
        if not mine:
            say(w, "no KEDA ScaledObject scales the workers")
        for s in mine:
            if s["spec"].get("minReplicaCount", 0) < 1:
                say(s, "minReplicaCount below 1 strands pending pages (see the note in scaledobject.yaml)")
            if s["spec"].get("maxReplicaCount", 100) < s["spec"].get("minReplicaCount", 0):
                say(s, "maxReplicaCount below minReplicaCount")
            streams = [
                t for t in s["spec"].get("triggers", [])
                if t.get("type") in ("redis-streams", "redis-cluster-streams")
            ]
            expected = job_streams(objects)
            if not streams:
                say(s, "no redis-streams trigger")
            else:
                triggered = {t.get("metadata", {}).get("stream") for t in streams}
                for missing in sorted(expected - triggered):
                    say(s, f"job stream {missing!r} has no trigger: its backlog would not scale the workers")
            for t in streams:
                m = t.get("metadata", {})
                if m.get("stream") not in expected:
                    say(s, f"trigger stream {m.get('stream')!r} is not a job stream ({', '.join(sorted(expected))})")
                if m.get("consumerGroup") != WORKER_GROUP:
                    say(s, f"trigger consumerGroup {m.get('consumerGroup')!r} is not {WORKER_GROUP!r}")
                if "lagCount" not in m:
                    say(s, "trigger scales on pending entries or length, not on the group's lag (lagCount)")

    policies = by_kind.get("NetworkPolicy", [])
    deny = [
        p for p in policies
        if p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) >= {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    if not deny:
        problems.append("NetworkPolicy: no default-deny policy (empty podSelector, Ingress and Egress, no rules)")
    for p in policies:
        selected = p["spec"].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        for rule in p["spec"].get("ingress", []):
            if not rule.get("from") and selected != "coordinator":
                say(p, f"ingress from anywhere to {selected or 'every pod'}: only coordinators take requests")
    return problems


def main():
    rendered, scaled_out = sys.argv[1], sys.argv[2]
    with open(rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    problems = problems_of(objects)
    with open(scaled_out, "w") as f:
        json.dump([o for o in objects if o["kind"] in ("ScaledObject", "TriggerAuthentication")], f)
    for p in problems:
        print(f"{rendered}: {p}")
    if problems:
        sys.exit(1)
    print(f"{rendered}: {len(objects)} objects keep the policy")


if __name__ == "__main__":
    main()

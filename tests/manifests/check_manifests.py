#!/usr/bin/env python3
"""Static checks of Conveyor's deployment manifests against the binaries they run.

    tests/manifests/check_manifests.py --bin-dir build/bin
    tests/manifests/check_manifests.py --metric-names

Checks (each problem is one line; the exit code is 1 if there is any):
  a. every YAML file under deploy/k8s, deploy/compose and dashboards/prometheus parses (all documents),
     and every JSON file under dashboards/grafana;
  b. kustomize consistency: every file a kustomization.yaml names exists, and every patch, replica
     count and image override targets something in the resources it builds on. Each kustomization is
     rendered by a small kustomize (resources, components, generators, strategic-merge and JSON 6902
     patches, images, replicas, namespace) so that the checks below see what `kubectl apply -k` would;
  c. every CONVEYOR_* variable given to a container (env, envFrom ConfigMaps and Secrets, compose
     environment and env_file, the Dockerfile's ENV) is an option of the binary that container runs,
     as its --help lists them (for `conveyor migrate`: `conveyor --help` and `conveyor migrate --help`),
     and has a value of the option's type;
  d. container ports, probe ports, PodMonitor and Service ports, NetworkPolicy ingress ports, compose
     expose/ports and Prometheus' compose scrape targets agree with the binary's HTTP port (its
     CONVEYOR_HTTP_PORT, a --http-port flag, or the default from --help); probe paths are /healthz,
     /readyz or /metrics, and no liveness probe uses /readyz; CONVEYOR_THREADS matches the CPU limit;
  e. a worker's grace periods: CONVEYOR_JOB_TIMEOUT <= CONVEYOR_SHUTDOWN_GRACE, and Kubernetes'
     terminationGracePeriodSeconds (or compose's stop_grace_period) >= the preStop sleep + the shutdown
     grace + the drain's bounded tail; the scheduler's likewise;
  f. KEDA ScaledObjects and HPAs target the worker Deployment; each rabbitmq trigger's queue is
     conveyor.<family> for a family the workers know (and consume); conveyor_workers_needed is
     aggregated with max() and used as an AverageValue target;
  g. broker and database clusters run by operators (RabbitmqCluster, CloudNativePG Cluster), and the URLs:
     a RabbitmqCluster has an odd number (>= 3) of replicas, a memory limit, an absolute memory watermark
     below what the operator tells RabbitMQ it has, pause_minority, a valid queue_leader_locator, pod
     anti-affinity on its own pods and a PodDisruptionBudget that keeps a majority (the operator makes
     none); a Cluster has >= 2 instances, synchronous replication (minSyncReplicas >= 1 <= maxSyncReplicas
     <= standbys, or postgresql.synchronous), anti-affinity left on, storage, and max_connections for the
     Conveyor pods' pools at their autoscaling maximum. References to what the operators derive from a CR's
     name (Services <name>, <name>-nodes, <name>-rw/-ro/-r; Secrets <name>-default-user, <name>-app) count
     as provided. In a render with such a cluster, every amqp/postgresql CONVEYOR_*_URL (and KEDA's host)
     points at a Service (or pod) the render creates or its operators make, on a port it serves, one
     backend per URL; CONVEYOR_PG_URL goes to the primary's -rw Service and the database initdb creates;
     the user and password are $(VARIABLES) from that backend's Secret. Everywhere: no CONVEYOR_* URL
     carries a literal password; an env value's $(NAME) is defined before it (else Kubernetes leaves it as
     written); a NetworkPolicy that restricts a pod's egress lets its URLs' ports out; PodMonitors of the
     backends' pods use the operators' port names and metrics paths.
--metric-names prints the metric names the autoscaling queries use (KEDA prometheus triggers and
prometheus-adapter rules), one per line, for a live test to look up.

Standard library and PyYAML only. The repository root is two levels above this file.
"""

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
BINARIES = ("conveyor-worker", "conveyor-scheduler", "conveyor")
PROBE_PATHS = {"/healthz", "/readyz", "/metrics"}

# What a drain takes beyond CONVEYOR_SHUTDOWN_GRACE (README, Operations, "Shutdown", and
# worker/src/worker.cpp): jobs still running after the grace get 5 s to unwind, the background tasks finish
# the SQL statement they are in (at most CONVEYOR_PG_STATEMENT_TIMEOUT, 10 s by default), then each of the two
# broker connections gets at most 2 s to close.
STATEMENT_TIMEOUT_S = 10
WORKER_DRAIN_TAIL_S = 5 + STATEMENT_TIMEOUT_S + 2 * 2
SCHEDULER_DRAIN_TAIL_S = STATEMENT_TIMEOUT_S + 2 * 2
# Job types with deadlines of their own, longer than CONVEYOR_JOB_TIMEOUT can be
# (jobs/emails/emails.cpp, jobs/payments/payments.cpp): the SMTP or gateway timeout + 10 s.
DERIVED_DEADLINES = (("emails.send", "CONVEYOR_SMTP_TIMEOUT", 10.0),
                     ("payments.charge", "CONVEYOR_PAYMENT_GATEWAY_TIMEOUT", 10.0))

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
# Kinds kustomize patches with strategic-merge semantics; anything else (CRDs) gets JSON merge patch.
BUILTIN_GROUPS = {"", "v1", "apps", "batch", "policy", "networking.k8s.io", "autoscaling", "rbac.authorization.k8s.io"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "APIService", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration", "PersistentVolume"}


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


class Problems:
    """One line per problem, each reported once even when several renders contain the same object."""

    def __init__(self):
        self.lines = []
        self._seen = set()

    def add(self, where, message, context=None):
        key = (str(where), message)
        if key in self._seen:
            return
        self._seen.add(key)
        line = f"{where}: {message}"
        if context:
            line += f" [in {context}]"
        self.lines.append(line)


def parse_duration(text):
    """Seconds in a duration as the binaries (30s, 500ms, 2m, 14d; a bare number is seconds) or Docker
    (1m30s) write it; None if it is not one."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * scale[unit] for number, unit in parts)


def cpu_cores(quantity):
    text = str(quantity)
    if text.endswith("m"):
        return float(text[:-1]) / 1000.0
    try:
        return float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------
# What the binaries say about themselves


class Option:
    def __init__(self, flag, type_text, default):
        self.flag = flag
        self.type_text = type_text
        self.default = default

    def value_error(self, value):
        """Why `value` is not acceptable for this option, or None."""
        value = str(value)
        type_text = self.type_text or ""
        if type_text == "" or type_text.startswith("BOOLEAN"):  # a flag, or an explicit boolean
            if value.lower() not in {"true", "false", "1", "0", "on", "off", "yes", "no"}:
                return f"'{value}' is not a boolean (true/false)"
        elif "DURATION" in type_text:
            if parse_duration(value) is None:
                return f"'{value}' is not a duration (e.g. 30s, 500ms, 2m)"
        elif type_text.startswith("UINT"):
            if not value.isdigit():
                return f"'{value}' is not an unsigned integer"
            bounds = re.search(r"in \[(\d+) - (\d+)\]", type_text)
            if bounds and not int(bounds.group(1)) <= int(value) <= int(bounds.group(2)):
                return f"'{value}' is outside [{bounds.group(1)} - {bounds.group(2)}]"
        elif type_text.startswith("FLOAT"):
            try:
                float(value)
            except ValueError:
                return f"'{value}' is not a number"
        members = re.search(r"\{([^}]*)\}", type_text)
        if members and value not in members.group(1).split(","):
            return f"'{value}' is not one of {members.group(1)}"
        return None


class Help:
    """The options (by environment variable) and subcommands of one command path, from its --help."""

    def __init__(self, text):
        self.text = text
        self.options = {}
        line_re = re.compile(r"^\s*(?:-\w,)?(--[\w-]+)(?:\s+(.*?))?\s*\(Env:(CONVEYOR_\w+)\)")
        for line in text.splitlines():
            match = line_re.match(line)
            if not match:
                continue
            spec = (match.group(2) or "").strip()
            type_text, _, default = spec.partition("=")
            if spec.endswith("..."):
                type_text = spec
            self.options[match.group(3)] = Option(match.group(1), type_text.strip(), default.strip() or None)
        self.subcommands = set()
        in_subcommands = False
        for line in text.splitlines():
            if line.startswith("Subcommands:"):
                in_subcommands = True
                continue
            if in_subcommands:
                match = re.match(r"^  ([a-z][\w-]*)\s", line)
                if match:
                    self.subcommands.add(match.group(1))
                elif line.strip() and not line.startswith(" "):
                    in_subcommands = False

    def flag_default(self, flag):
        for option in self.options.values():
            if option.flag == flag:
                return option.default
        return None


class Binaries:
    def __init__(self, bin_dir):
        self.bin_dir = Path(bin_dir)
        self._cache = {}

    def help(self, path):
        """Help of a command path, e.g. ("conveyor", "migrate")."""
        path = tuple(path)
        if path not in self._cache:
            executable = self.bin_dir / path[0]
            try:
                result = subprocess.run([str(executable), *path[1:], "--help"], capture_output=True,
                                        text=True, timeout=20, check=False)
            except OSError as error:
                raise SystemExit(f"check_manifests: cannot run {executable}: {error}")
            if result.returncode != 0:
                raise SystemExit(f"check_manifests: {' '.join(path)} --help exited {result.returncode}: "
                                 f"{result.stderr.strip()}")
            self._cache[path] = Help(result.stdout)
        return self._cache[path]

    def command(self, argv):
        """(binary, merged options, command path) of an argv whose first word is a Conveyor binary."""
        binary = os.path.basename(argv[0])
        path = [binary]
        options = dict(self.help(path).options)
        for word in argv[1:]:
            if word.startswith("-") or word not in self.help(path).subcommands:
                break
            path.append(word)
            options.update(self.help(path).options)
        return binary, options, " ".join(path)

    def families(self):
        default = self.help(["conveyor-worker"]).flag_default("--queues")
        return [family for family in (default or "").split(",") if family]


# ---------------------------------------------------------------------------------------------------------
# YAML loading and check (a)


def load_yaml_documents(path, problems):
    try:
        with open(path, encoding="utf-8") as stream:
            return [document for document in yaml.safe_load_all(stream) if document is not None]
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        problems.add(rel(path), f"does not parse as YAML: {str(error).splitlines()[0]}")
        return []


def check_parse(problems, stats):
    for folder in (K8S, COMPOSE, ROOT / "dashboards" / "prometheus"):
        for path in sorted(folder.rglob("*")):
            if path.suffix in (".yaml", ".yml") and path.is_file():
                stats["yaml_files"] += 1
                stats["yaml_documents"] += len(load_yaml_documents(path, problems))
    for path in sorted((ROOT / "dashboards" / "grafana").rglob("*.json")):
        stats["json_files"] += 1
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as error:
            problems.add(rel(path), f"does not parse as JSON: {error}")


# ---------------------------------------------------------------------------------------------------------
# A small kustomize, and check (b)


class Resource:
    def __init__(self, document, origin):
        self.doc = document
        self.origin = origin

    @property
    def kind(self):
        return self.doc.get("kind", "")

    @property
    def name(self):
        return (self.doc.get("metadata") or {}).get("name", "")

    @property
    def group(self):
        api_version = self.doc.get("apiVersion", "")
        return api_version.split("/")[0] if "/" in api_version else ""

    def __str__(self):
        return f"{self.kind}/{self.name}"


def kustomization_file(folder):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_env_file(path):
    data = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        data[key.strip()] = value
    return data


def strategic_merge(target, patch, builtin):
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value, builtin)
        elif (builtin and isinstance(value, list) and key in MERGE_KEYS and isinstance(target.get(key), list)
              and all(isinstance(item, dict) for item in value + target[key])):
            merge_key = MERGE_KEYS[key]
            for item in value:
                existing = next((old for old in target[key] if old.get(merge_key) == item.get(merge_key)), None)
                if item.get("$patch") == "delete":
                    if existing is not None:
                        target[key].remove(existing)
                elif existing is None:
                    target[key].append(copy.deepcopy(item))
                else:
                    strategic_merge(existing, item, builtin)
        else:
            target[key] = copy.deepcopy(value)


def json_pointer(path):
    if path == "":
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def json6902(document, operations):
    """Applies the operations; returns an error text or None."""
    for operation in operations:
        op, parts = operation.get("op"), json_pointer(operation.get("path", ""))
        if op not in ("add", "replace", "remove", "test"):
            return f"JSON patch op '{op}' is not supported by this checker"
        parent = document
        for part in parts[:-1]:
            if isinstance(parent, list):
                if not part.isdigit() or int(part) >= len(parent):
                    return f"path {operation['path']} does not exist"
                parent = parent[int(part)]
            elif isinstance(parent, dict) and part in parent:
                parent = parent[part]
            else:
                return f"path {operation['path']} does not exist"
        last = parts[-1]
        if isinstance(parent, list):
            if last == "-" and op == "add":
                parent.append(copy.deepcopy(operation.get("value")))
                continue
            if not last.isdigit() or int(last) > len(parent) or (op != "add" and int(last) == len(parent)):
                return f"path {operation['path']} does not exist"
            index = int(last)
            if op == "add":
                parent.insert(index, copy.deepcopy(operation.get("value")))
            elif op == "replace":
                parent[index] = copy.deepcopy(operation.get("value"))
            elif op == "remove":
                del parent[index]
            elif parent[index] != operation.get("value"):
                return f"test of {operation['path']} failed"
        elif isinstance(parent, dict):
            if op in ("replace", "remove", "test") and last not in parent:
                return f"path {operation['path']} does not exist"
            if op in ("add", "replace"):
                parent[last] = copy.deepcopy(operation.get("value"))
            elif op == "remove":
                del parent[last]
            elif parent[last] != operation.get("value"):
                return f"test of {operation['path']} failed"
        else:
            return f"path {operation['path']} does not exist"
    return None


class Kustomize:
    """Renders kustomizations well enough to check them; reports what it cannot follow."""

    def __init__(self, problems):
        self.problems = problems
        self.components_used = set()

    def render(self, folder, stack=()):
        folder = folder.resolve()
        file = kustomization_file(folder)
        if file is None:
            self.problems.add(rel(folder), "is referenced as a kustomization but has no kustomization.yaml")
            return []
        if folder in stack:
            self.problems.add(rel(file), "includes itself (a cycle of resources/components)")
            return []
        documents = load_yaml_documents(file, self.problems)
        if not documents or not isinstance(documents[0], dict):
            return []
        spec = documents[0]
        where = rel(file)
        resources = []
        for entry in spec.get("resources") or []:
            path = folder / entry
            if re.match(r"^[a-z]+://|^github\.com/", str(entry)):
                self.problems.add(where, f"resource {entry} is remote; this checker renders local files only")
            elif path.is_dir():
                resources += self.render(path, stack + (folder,))
            elif path.is_file():
                resources += [Resource(document, rel(path)) for document in load_yaml_documents(path, self.problems)
                              if isinstance(document, dict)]
            else:
                self.problems.add(where, f"resources entry {entry} does not exist")
        for entry in spec.get("components") or []:
            path = (folder / entry).resolve()
            self.components_used.add(path)
            if not path.is_dir():
                self.problems.add(where, f"components entry {entry} does not exist")
                continue
            component_file = kustomization_file(path)
            component = load_yaml_documents(component_file, self.problems)[0] if component_file else {}
            if component.get("kind") != "Component":
                self.problems.add(where, f"components entry {entry} is not a kind: Component")
            resources = self.apply(path, component, resources, stack + (folder,))
        return self.apply(folder, spec, resources, stack, own_resources_done=True)

    def apply(self, folder, spec, resources, stack, own_resources_done=False):
        """Generators and transformers of one kustomization or component, on `resources`."""
        where = rel(kustomization_file(folder) or folder)
        if not own_resources_done:
            for entry in spec.get("resources") or []:
                path = folder / entry
                if path.is_dir():
                    resources = resources + self.render(path, stack + (folder,))
                elif path.is_file():
                    resources = resources + [Resource(document, rel(path))
                                             for document in load_yaml_documents(path, self.problems)
                                             if isinstance(document, dict)]
                else:
                    self.problems.add(where, f"resources entry {entry} does not exist")
        for generator_key, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
            for generator in spec.get(generator_key) or []:
                resources = self.generate(folder, where, kind, generator, resources)
        patches = list(spec.get("patches") or [])
        patches += [{"path": path} for path in spec.get("patchesStrategicMerge") or []]
        patches += spec.get("patchesJson6902") or []
        for patch in patches:
            resources = self.patch(folder, where, patch, resources)
        for image in spec.get("images") or []:
            matched = False
            for resource in resources:
                for container in containers_of(resource):
                    repository = split_image(container.get("image", ""))[0]
                    if repository == image.get("name"):
                        matched = True
                        new_repository = image.get("newName", repository)
                        tag = image.get("digest") and "@" + image["digest"] or (
                            ":" + str(image["newTag"]) if "newTag" in image else "")
                        container["image"] = new_repository + (tag or split_image(container["image"])[1])
            if not matched:
                self.problems.add(where, f"images entry {image.get('name')} matches no container image")
        for replica in spec.get("replicas") or []:
            targets = [resource for resource in resources if resource.name == replica.get("name")
                       and resource.kind in ("Deployment", "StatefulSet", "ReplicaSet")]
            if not targets:
                self.problems.add(where, f"replicas entry {replica.get('name')} matches no Deployment/StatefulSet")
            for resource in targets:
                resource.doc.setdefault("spec", {})["replicas"] = replica.get("count")
        if spec.get("namespace"):
            for resource in resources:
                if resource.kind not in CLUSTER_SCOPED:
                    resource.doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
        return resources

    def generate(self, folder, where, kind, generator, resources):
        name = generator.get("name")
        data = {}
        for literal in generator.get("literals") or []:
            key, _, value = str(literal).partition("=")
            data[key] = value
        for env in generator.get("envs") or ([generator["env"]] if generator.get("env") else []):
            path = folder / env
            if path.is_file():
                data.update(read_env_file(path))
            else:
                self.problems.add(where, f"{generator_label(kind)} {name}: envs file {env} does not exist")
        for entry in generator.get("files") or []:
            key, _, source = str(entry).rpartition("=") if "=" in str(entry) else ("", "", str(entry))
            path = folder / source
            if path.is_file():
                data[key or path.name] = path.read_text(encoding="utf-8")
            else:
                self.problems.add(where, f"{generator_label(kind)} {name}: file {source} does not exist")
        behavior = generator.get("behavior", "create")
        existing = [resource for resource in resources if resource.kind == kind and resource.name == name]
        if behavior in ("merge", "replace"):
            if not existing:
                self.problems.add(where, f"{generator_label(kind)} {name} has behavior {behavior}, "
                                         f"but the resources it builds on have no {kind} {name}")
                return resources
            field = "data" if kind == "ConfigMap" else "stringData"
            if behavior == "replace":
                existing[0].doc[field] = data
                existing[0].doc.pop("data" if field == "stringData" else "binaryData", None)
            else:
                existing[0].doc.setdefault(field, {}).update(data)
            return resources
        if existing:
            self.problems.add(where, f"{generator_label(kind)} {name} already exists in the resources "
                                     "(use behavior: merge or replace)")
        field = "data" if kind == "ConfigMap" else "stringData"
        document = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, field: data}
        return resources + [Resource(document, where)]

    def patch(self, folder, where, patch, resources):
        if patch.get("path"):
            path = folder / patch["path"]
            if not path.is_file():
                self.problems.add(where, f"patch file {patch['path']} does not exist")
                return resources
            label = f"patch {patch['path']}"
            bodies = load_yaml_documents(path, self.problems)
        elif patch.get("patch") is not None:
            label = "inline patch"
            try:
                bodies = [body for body in yaml.safe_load_all(patch["patch"]) if body is not None]
            except yaml.YAMLError as error:
                self.problems.add(where, f"inline patch does not parse: {str(error).splitlines()[0]}")
                return resources
        else:
            self.problems.add(where, "a patches entry has neither path nor patch")
            return resources
        for body in bodies:
            target = dict(patch.get("target") or {})
            if isinstance(body, dict) and not target:
                target = {"kind": body.get("kind"), "name": (body.get("metadata") or {}).get("name")}
            if not target:
                self.problems.add(where, f"{label} is a JSON 6902 patch without a target")
                continue
            if any(key in target for key in ("labelSelector", "annotationSelector")):
                self.problems.add(where, f"{label}: label/annotation selectors are not supported by this checker")
                continue
            matches = [resource for resource in resources if target_matches(target, resource)]
            description = "/".join(str(target.get(key)) for key in ("kind", "name") if target.get(key))
            if not matches:
                self.problems.add(where, f"{label} targets {description or target}, which is not in the "
                                         "resources it builds on")
                continue
            for resource in matches:
                if isinstance(body, list):
                    error = json6902(resource.doc, body)
                    if error:
                        self.problems.add(where, f"{label} on {resource}: {error}")
                elif isinstance(body, dict) and body.get("$patch") == "delete":
                    resources = [other for other in resources if other is not resource]
                elif isinstance(body, dict):
                    strategic_merge(resource.doc, body, resource.group in BUILTIN_GROUPS)
        return resources


def generator_label(kind):
    return "configMapGenerator" if kind == "ConfigMap" else "secretGenerator"


def target_matches(target, resource):
    if target.get("kind") and target["kind"] != resource.kind:
        return False
    if target.get("group") is not None and target.get("group") != resource.group:
        return False
    if target.get("version") and not resource.doc.get("apiVersion", "").endswith(target["version"]):
        return False
    if target.get("name") and not re.fullmatch(str(target["name"]), resource.name):
        return False
    if target.get("namespace") and target["namespace"] != (resource.doc.get("metadata") or {}).get("namespace"):
        return False
    return True


def split_image(image):
    """('registry/repo', ':tag' or '@digest' or '')."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, "@" + digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, ":" + tag
    return image, ""


# ---------------------------------------------------------------------------------------------------------
# Pods, containers and what runs in them


def pod_spec(resource):
    spec = resource.doc.get("spec") or {}
    if resource.kind == "Pod":
        return spec
    if resource.kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    if resource.kind in POD_KINDS:
        return (spec.get("template") or {}).get("spec") or {}
    return {}


def pod_labels(resource):
    spec = resource.doc.get("spec") or {}
    if resource.kind == "Pod":
        return (resource.doc.get("metadata") or {}).get("labels") or {}
    if resource.kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}


def containers_of(resource):
    spec = pod_spec(resource)
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


class Dockerfile:
    def __init__(self, problems):
        self.cmd = None
        self.env = {}
        self.expose = []
        self.user = None
        if not DOCKERFILE.is_file():
            problems.add(rel(DOCKERFILE), "does not exist")
            return
        text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
        final_stage = []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.upper().startswith("FROM "):
                final_stage = []
            final_stage.append(stripped)
        for line in final_stage:
            instruction, _, rest = line.partition(" ")
            instruction = instruction.upper()
            if instruction == "CMD":
                try:
                    self.cmd = json.loads(rest)
                except ValueError:
                    self.cmd = shlex.split(rest)
            elif instruction == "ENV":
                if "=" in rest.split(" ", 1)[0]:
                    for item in shlex.split(rest):
                        key, _, value = item.partition("=")
                        self.env[key] = value
                else:
                    key, _, value = rest.partition(" ")
                    self.env[key] = value.strip()
            elif instruction == "EXPOSE":
                self.expose += [int(port.split("/")[0]) for port in rest.split()]
            elif instruction == "USER":
                self.user = rest.strip()


class Container:
    """A container of Conveyor's image: where it is, what runs, with which settings."""

    def __init__(self, where, label, argv, env, binaries, problems, context, image_env=None):
        self.where = where
        self.label = label
        self.argv = argv
        self.env = env  # name -> value (str) or None when it comes from a Secret or the downward API
        self.image_env = image_env or {}  # the Dockerfile's ENV, under the container's own
        self.binary, self.options, self.command = binaries.command(argv)
        self.help = binaries.help([self.binary])
        self.problems = problems
        self.context = context

    def report(self, message):
        self.problems.add(self.where, f"{self.label}: {message}", self.context)

    def setting(self, variable):
        """Effective value of an option: a flag in argv wins over the variable, then the default."""
        option = self.options.get(variable)
        if option is None:
            return None
        for index, word in enumerate(self.argv):
            if word == option.flag and index + 1 < len(self.argv):
                return self.argv[index + 1]
            if word.startswith(option.flag + "="):
                return word.split("=", 1)[1]
        if self.env.get(variable) is not None:
            return self.env[variable]
        if variable in self.image_env:
            return self.image_env[variable]
        return option.default

    def duration(self, variable):
        value = self.setting(variable)
        return None if value is None else parse_duration(value)

    def http_port(self):
        value = self.setting("CONVEYOR_HTTP_PORT")
        return int(value) if value and str(value).isdigit() else None

    def check_env(self, stats):
        for variable, value in sorted(self.env.items()):
            if not variable.startswith("CONVEYOR_"):
                continue
            stats["variables"] += 1
            option = self.options.get(variable)
            if option is None:
                self.report(f"{variable} is not an option of `{self.command}` (not in its --help)")
            elif value is not None:
                error = option.value_error(value)
                if error:
                    self.report(f"{variable}: {error}")


# ---------------------------------------------------------------------------------------------------------
# Checks (c) to (f) on one rendered kustomization


def argv_of(container, dockerfile):
    command = [str(word) for word in container.get("command") or []]
    args = [str(word) for word in container.get("args") or []]
    if command:
        return command + args
    if args:
        return args
    repository = split_image(container.get("image", ""))[0]
    if repository.rsplit("/", 1)[-1] == "conveyor" and dockerfile.cmd:
        return list(dockerfile.cmd)
    return []


def is_conveyor(argv):
    return bool(argv) and os.path.basename(argv[0]) in BINARIES


def selector_matches(selector, labels):
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def secret_keys(secret):
    return set(secret.doc.get("data") or {}) | set(secret.doc.get("stringData") or {}) if secret else set()


def find(resources, kind, name):
    return next((resource for resource in resources if resource.kind == kind and resource.name == name), None)


def pre_stop_seconds(container):
    pre_stop = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre_stop:
        return float((pre_stop["sleep"] or {}).get("seconds", 0))
    command = ((pre_stop.get("exec") or {}).get("command")) or []
    words = [str(word) for word in command]
    if words and os.path.basename(words[0]) == "sleep" and len(words) > 1:
        return parse_duration(words[1]) or 0.0
    if len(words) >= 3 and words[1] == "-c":
        match = re.search(r"\bsleep\s+(\S+)", words[2])
        if match:
            return parse_duration(match.group(1)) or 0.0
    return 0.0


# ---------------------------------------------------------------------------------------------------------
# Check (g): operator-run broker and database clusters, and the URLs that point at them


# What the operators make from a custom resource, named after it, so that references to objects that are in no
# manifest can still be checked. RabbitMQ Cluster Operator (internal/resource/*.go): Service <name> and headless
# <name>-nodes, StatefulSet <name>-server, Secret <name>-default-user, pods labelled app.kubernetes.io/name:
# <name>; it makes no PodDisruptionBudget. CloudNativePG (docs: applications.md, monitoring.md; pkg/specs):
# Services <name>-rw (primary), <name>-ro (standbys), <name>-r (any), Secret <name>-app (the initdb owner's),
# pods labelled cnpg.io/cluster: <name>, metrics on port `metrics`.
RABBITMQ_SECRET_KEYS = {"username", "password", "host", "port", "provider", "type", "default_user.conf"}
CNPG_SECRET_KEYS = {"username", "user", "password", "dbname", "host", "port", "pgpass", "uri", "jdbc-uri",
                    "fqdn-uri", "fqdn-jdbc-uri"}
URL_FAMILIES = {"amqp": ("rabbitmq", 5672), "amqps": ("rabbitmq", 5671), "postgres": ("postgres", 5432),
                "postgresql": ("postgres", 5432)}
VARIABLE_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
GIB = 1024 ** 3


class Backend:
    """A RabbitmqCluster or CloudNativePG Cluster, and the objects its operator derives from it."""

    def __init__(self, resource, family, services, pod_hosts, secret, secret_keys, pod_labels, pod_ports,
                 metrics_paths, primary_service=None, database=None):
        self.resource = resource
        self.family = family  # "rabbitmq" or "postgres", as in URL_FAMILIES
        self.services = services  # name -> {port name: number}
        self.pod_hosts = pod_hosts  # "<pod>.<headless service>"
        self.secret = secret
        self.secret_keys = secret_keys  # None: a Secret the user provides, which must be in the manifests
        self.pod_labels = pod_labels
        self.pod_ports = pod_ports
        self.metrics_paths = metrics_paths
        self.primary_service = primary_service
        self.database = database

    def derived(self):
        """Resources standing for the Services and the Secret the operator will create."""
        origin = f"{self.resource.origin} ({self.resource}, made by its operator)"
        made = [Resource({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                          "spec": {"ports": [{"name": key, "port": port} for key, port in ports.items()]}}, origin)
                for name, ports in self.services.items()]
        if self.secret_keys is not None:
            made.append(Resource({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": self.secret},
                                  "data": dict.fromkeys(sorted(self.secret_keys), "")}, origin))
        return made


def quantity_bytes(text):
    """Bytes in a Kubernetes quantity (4Gi, 512Mi, 2G) or a RabbitMQ information unit (2GiB, 1GB, 1024MiB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)(i?)[Bb]?\s*", str(text))
    if not match:
        return None
    number, prefix, binary = match.groups()
    power = "KMGT".find(prefix.upper()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def rabbitmq_conf(text):
    """key -> value of a rabbitmq.conf (sysctl format) fragment."""
    settings = {}
    for line in str(text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def backends_of(resources):
    found = []
    for resource in resources:
        spec = resource.doc.get("spec") or {}
        name = resource.name
        if resource.kind == "RabbitmqCluster" and resource.group == "rabbitmq.com":
            ports = {"amqp": 5672}
            if (spec.get("tls") or {}).get("secretName"):
                ports["amqps"] = 5671
            replicas = spec.get("replicas", 1) if isinstance(spec.get("replicas", 1), int) else 0
            found.append(Backend(
                resource, "rabbitmq", {name: dict(ports), f"{name}-nodes": dict(ports)},
                [f"{name}-server-{index}.{name}-nodes" for index in range(replicas)],
                f"{name}-default-user", RABBITMQ_SECRET_KEYS,
                {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "rabbitmq",
                 "app.kubernetes.io/part-of": "rabbitmq"},
                {"epmd": 4369, "amqp": 5672, "http": 15672, "prometheus": 15692},
                {"/metrics", "/metrics/per-object", "/metrics/detailed"}))
        elif resource.kind == "Cluster" and resource.group == "postgresql.cnpg.io":
            initdb = (spec.get("bootstrap") or {}).get("initdb") or {}
            disabled = ((spec.get("managed") or {}).get("services") or {}).get("disabledDefaultServices") or []
            services = {f"{name}-{suffix}": {"postgres": 5432}
                        for suffix in ("rw", "ro", "r") if suffix not in disabled}
            own_secret = (initdb.get("secret") or {}).get("name")
            # initdb's database (default `app`); a cluster recovered or cloned from elsewhere has its source's.
            database = initdb.get("database", "app") if initdb or not spec.get("bootstrap") else None
            found.append(Backend(
                resource, "postgres", services, [], own_secret or f"{name}-app",
                None if own_secret else CNPG_SECRET_KEYS,
                {"cnpg.io/cluster": name}, {"postgresql": 5432, "metrics": 9187}, {"/metrics"},
                primary_service=f"{name}-rw", database=database))
    return found


def split_url(text):
    """(scheme, userinfo or None, [(host, port or None)], path, query) of a URL that may name several hosts
    (libpq's and Conveyor's form: scheme://user:pass@host1:port1,host2:port2/path?query), or None."""
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?", str(text).strip())
    if not match:
        return None
    scheme, authority, path, query = match.groups()
    userinfo, at, hostlist = authority.rpartition("@")
    hosts = []
    for entry in hostlist.split(","):
        host, colon, port = entry.rpartition(":") if not entry.endswith("]") else (entry, "", "")
        if not colon:
            host, port = entry, ""
        hosts.append((host, int(port) if port.isdigit() else None))
    return scheme.lower(), userinfo if at else None, hosts, path, query or ""


def literal_password(url):
    """The URL's password if it is written out rather than made of $(VARIABLE) references, else None."""
    parts = split_url(url)
    if parts is None or parts[1] is None or ":" not in parts[1]:
        return None
    password = parts[1].split(":", 1)[1]
    if not password or re.fullmatch(r"(?:\$\([A-Za-z_][A-Za-z0-9_]*\))+", password):
        return None
    return password


class HostIndex:
    """Every spelling of the backends' Service and pod names a client in `namespace` may use."""

    def __init__(self, backends, services, namespace):
        self.namespace = namespace
        self.entries = {}  # host -> (backend or None, service name, ports or None)
        self.backend_services = {name for backend in backends for name in backend.services}
        for backend in backends:
            for name, ports in backend.services.items():
                self._add(name, (backend, name, ports))
            for pod in backend.pod_hosts:
                headless = pod.split(".", 1)[1]
                self._add(pod, (backend, headless, backend.services.get(headless)))
        for service in services:
            ports = {str(port.get("name", port.get("port"))): port.get("port")
                     for port in (service.doc.get("spec") or {}).get("ports") or []}
            self._add(service.name, (None, service.name, ports))

    def _add(self, short, entry):
        self.entries.setdefault(short, entry)
        if self.namespace:
            for suffix in ("", ".svc", ".svc.cluster.local"):
                self.entries.setdefault(f"{short}.{self.namespace}{suffix}", entry)

    def lookup(self, host):
        entry = self.entries.get(host)
        if entry is None and not self.namespace:
            # A namespace-less render: accept <service>.<any namespace>[.svc[.cluster.local]].
            base = re.sub(r"\.svc(\.cluster\.local)?$", "", host)
            if "." in base:
                entry = self.entries.get(base.rsplit(".", 1)[0])
        return entry


def check_url(report, what, url, index, secret_refs, stats, writes=False):
    """A URL in a render that has operator-run backends: every host is a Service (or pod) the render creates or
    its operators make, on a port it serves, all of one backend; a database URL opens the database that backend
    creates, and one for writes goes to the primary; its user and password are $(VARIABLES) taken from that
    backend's Secret (secret_refs: variable -> (Secret, key); None for KEDA's host, whose user comes apart)."""
    parts = split_url(url)
    if parts is None or parts[0] not in URL_FAMILIES:
        return
    scheme, userinfo, hosts, path, _ = parts
    family, default_port = URL_FAMILIES[scheme]
    stats["urls"] += 1
    owners = []
    for host, port in hosts:
        port = port or default_port
        entry = index.lookup(host)
        if entry is None:
            report(f"{what} points at {host}, which is none of the Services this kustomization creates or its "
                   f"operators make ({', '.join(sorted(index.backend_services))})")
            continue
        backend, service, ports = entry
        if backend is not None and backend.family != family:
            report(f"{what} ({scheme}://) points at {host}, which belongs to {backend.resource}")
            continue
        if ports and port not in ports.values():
            report(f"{what} uses port {port} of {host}, which serves "
                   f"{', '.join(str(number) for number in ports.values())}")
        if backend is None:
            continue
        owners.append(backend)
        if writes and backend.primary_service and service != backend.primary_service:
            report(f"{what} points at {host}: its writes need the primary's Service, {backend.primary_service} "
                   f"({service} may lead to a read-only standby)")
    if not owners:
        return
    owner = owners[0]
    if len({backend.resource.name for backend in owners}) > 1:
        report(f"{what} mixes hosts of {', '.join(sorted({str(backend.resource) for backend in owners}))}")
    if owner.database is not None and path.strip("/") != owner.database:
        report(f"{what} opens database '{path.strip('/')}', but {owner.resource} creates '{owner.database}' "
               "(bootstrap.initdb.database)")
    if secret_refs is None:
        return
    if userinfo is None or ":" not in userinfo:
        report(f"{what} carries no password; {owner.resource}'s user is in Secret {owner.secret}")
        return
    for part, wanted, role in zip(userinfo.split(":", 1), ({"username", "user"}, {"password"}), ("user", "password")):
        for variable in VARIABLE_REF.findall(part):
            ref = secret_refs.get(variable)
            if ref is None:
                report(f"{what} takes its {role} from $({variable}), which does not come from a Secret")
            elif ref[0] != owner.secret:
                report(f"{what} takes $({variable}) from Secret {ref[0]}, but its host belongs to {owner.resource}, "
                       f"whose user is in Secret {owner.secret}")
            elif ref[1] not in wanted:
                report(f"{what} takes its {role} from key {ref[1]} of Secret {ref[0]}")


def check_references(where, label, raw, envfrom_names, envfrom_complete, problems, context):
    """$(NAME) in an env value: Kubernetes expands it only from variables defined before it (envFrom's, then the
    env entries above it); any other reference stays in the value as written, a URL with "$(DB_PASSWORD)" for a
    password."""
    defined = set(envfrom_names)
    entries = raw.get("env") or []
    for entry in entries:
        if entry.get("value") is not None and not entry.get("valueFrom"):
            for variable in VARIABLE_REF.findall(str(entry["value"])):
                if variable in defined:
                    continue
                later = any(other.get("name") == variable for other in entries)
                if later or envfrom_complete:
                    problems.add(where, f"{label}: {entry.get('name')} uses $({variable}), which is "
                                        f"{'defined only after it' if later else 'not defined'} in the "
                                        "container's env, so Kubernetes leaves it unexpanded", context)
        defined.add(entry.get("name"))


def check_container_urls(container, resource, known, backends, secret_refs, stats):
    """A Conveyor container's URL settings: no password written out; in a render with operator-run backends,
    check_url; and where a NetworkPolicy restricts the pod's egress, it lets the URL's ports out."""
    namespace = (resource.doc.get("metadata") or {}).get("namespace")
    index = HostIndex(backends, [other for other in known if other.kind == "Service"], namespace) if backends else None
    for variable, value in sorted(container.env.items()):
        parts = split_url(value) if value is not None and str(variable).startswith("CONVEYOR_") else None
        if parts is None:
            continue
        if literal_password(value) is not None:
            container.report(f"{variable} carries a literal password: take it from a Secret (secretKeyRef into a "
                             "variable defined before it, then $(VARIABLE) in the URL)")
        if index is not None:
            check_url(container.report, variable, value, index, secret_refs, stats,
                      writes=variable == "CONVEYOR_PG_URL")
        if parts[0] in URL_FAMILIES:
            for host, port in parts[2]:
                port = port or URL_FAMILIES[parts[0]][1]
                if egress_allows(known, pod_labels(resource), port) is False:
                    container.report(f"{variable} reaches {host}:{port}, but the NetworkPolicies that select the "
                                     "pod let no traffic out to that port")


def egress_allows(resources, labels, port):
    """None if no NetworkPolicy restricts the pods' egress; else whether one lets `port` out."""
    restricting = []
    for policy in resources:
        if policy.kind != "NetworkPolicy":
            continue
        spec = policy.doc.get("spec") or {}
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        if "Egress" in types and selector_matches(spec.get("podSelector"), labels):
            restricting.append(spec)
    if not restricting:
        return None
    for spec in restricting:
        for rule in spec.get("egress") or []:
            entries = rule.get("ports")
            if not entries:
                return True
            for entry in entries:
                number = entry.get("port")
                if number is None or (isinstance(number, int) and number <= port <= entry.get("endPort", number)):
                    return True
    return False


def check_backends(resources, backends, conveyor_pods, problems, context, stats):
    for backend in backends:
        stats["backends"] += 1
        resource = backend.resource
        where = resource.origin
        spec = resource.doc.get("spec") or {}
        budgets = [pdb for pdb in resources if pdb.kind == "PodDisruptionBudget"
                    and selector_matches((pdb.doc.get("spec") or {}).get("selector"), backend.pod_labels)
                    and ((pdb.doc.get("spec") or {}).get("selector") or {}).get("matchLabels")]
        if backend.family == "rabbitmq":
            replicas = spec.get("replicas", 1)
            if not isinstance(replicas, int) or replicas < 3 or replicas % 2 == 0:
                problems.add(where, f"{resource} has {replicas} replicas: quorum queues need an odd number, at least "
                                    "3, to keep a majority through the loss of a node", context)
                continue
            limit = quantity_bytes(((spec.get("resources") or {}).get("limits") or {}).get("memory", ""))
            conf = rabbitmq_conf((spec.get("rabbitmq") or {}).get("additionalConfig"))
            if limit is None:
                problems.add(where, f"{resource} sets no memory limit: the operator then tells RabbitMQ nothing "
                                    "about its memory, and the watermark follows the node's RAM", context)
            if "vm_memory_high_watermark.absolute" in conf:
                watermark = quantity_bytes(conf["vm_memory_high_watermark.absolute"])
                # The operator gives RabbitMQ the limit minus headroom for the VM: 20%, at most 2 GiB.
                available = None if limit is None else limit - min(limit // 5, 2 * GIB)
                if watermark is None:
                    problems.add(where, f"{resource}: vm_memory_high_watermark.absolute "
                                        f"'{conf['vm_memory_high_watermark.absolute']}' is not a size", context)
                elif available is not None and watermark >= available:
                    problems.add(where, f"{resource}: vm_memory_high_watermark.absolute "
                                        f"{conf['vm_memory_high_watermark.absolute']} is not below the "
                                        f"{available / GIB:.2f} GiB RabbitMQ is told it has (the memory limit less "
                                        "the operator's headroom)", context)
            elif limit is not None:
                problems.add(where, f"{resource} sets no vm_memory_high_watermark.absolute in "
                                    "rabbitmq.additionalConfig: the default, 0.4 of what the node reports, is not "
                                    "tied to the memory limit", context)
            handling = conf.get("cluster_partition_handling", "pause_minority")
            if handling != "pause_minority":
                problems.add(where, f"{resource}: cluster_partition_handling = {handling}; pause_minority (the "
                                    "operator's default) stops the nodes cut off from the majority", context)
            locator = conf.get("queue_leader_locator")
            if locator is not None and locator not in ("client-local", "balanced"):
                problems.add(where, f"{resource}: queue_leader_locator = {locator} is not one of client-local, "
                                    "balanced (RabbitMQ 3.10)", context)
            anti = (spec.get("affinity") or {}).get("podAntiAffinity") or {}
            terms = list(anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
            terms += [term.get("podAffinityTerm") or {}
                      for term in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
            if not any(selector_matches(term.get("labelSelector"), backend.pod_labels)
                       and term.get("labelSelector") and term.get("topologyKey") for term in terms):
                problems.add(where, f"{resource} has no pod anti-affinity selecting its own pods "
                                    f"(app.kubernetes.io/name: {resource.name}): its nodes may share a Kubernetes "
                                    "node and fall together", context)
            majority_loss = (replicas - 1) // 2
            if not budgets:
                problems.add(where, f"{resource} has no PodDisruptionBudget (the operator creates none): a drain "
                                    "may stop a majority of its nodes at once", context)
            for pdb in budgets:
                pdb_spec = pdb.doc.get("spec") or {}
                unavailable = pdb_spec.get("maxUnavailable")
                available = pdb_spec.get("minAvailable")
                if (isinstance(unavailable, int) and unavailable > majority_loss) or (
                        isinstance(available, int) and replicas - available > majority_loss):
                    problems.add(pdb.origin, f"{pdb} lets {resource} lose more than {majority_loss} of {replicas} "
                                             "nodes at once, and its quorum queues their majority", context)
        else:
            instances = spec.get("instances", 1)
            if not isinstance(instances, int) or instances < 2:
                problems.add(where, f"{resource} has {instances} instance(s): a failover needs a standby (2 or more)",
                             context)
                continue
            synchronous = (spec.get("postgresql") or {}).get("synchronous")
            low, high = spec.get("minSyncReplicas"), spec.get("maxSyncReplicas")
            if synchronous and (low is not None or high is not None):
                problems.add(where, f"{resource} sets both postgresql.synchronous and min/maxSyncReplicas, which "
                                    "CloudNativePG refuses", context)
            elif synchronous:
                number = synchronous.get("number")
                if not isinstance(number, int) or not 1 <= number <= instances - 1:
                    problems.add(where, f"{resource}: postgresql.synchronous.number {number} is not between 1 and "
                                        f"{instances - 1} (the standbys)", context)
            elif not isinstance(low, int) or low < 1:
                problems.add(where, f"{resource} does not replicate synchronously (minSyncReplicas {low}): a "
                                    "failover could lose confirmed commits", context)
            elif not isinstance(high, int) or not low <= high <= instances - 1:
                problems.add(where, f"{resource}: maxSyncReplicas {high} must be between minSyncReplicas ({low}) and "
                                    f"the number of standbys ({instances - 1})", context)
            if (spec.get("affinity") or {}).get("enablePodAntiAffinity") is False:
                problems.add(where, f"{resource} disables pod anti-affinity: the primary and its standby may share a "
                                    "node and fall together", context)
            storage = spec.get("storage") or {}
            if not storage.get("size") and not storage.get("pvcTemplate"):
                problems.add(where, f"{resource} has no storage.size", context)
            check_connection_budget(resources, backend, conveyor_pods, problems, context)


def check_connection_budget(resources, backend, conveyor_pods, problems, context):
    """max_connections of a CloudNativePG cluster against what the Conveyor pods can open on its primary: the
    workers' autoscaling maximum x their pool, each scheduler's pool + 3 (its leader lock and listeners; the
    README's "capacity limits")."""
    parameters = ((backend.resource.doc.get("spec") or {}).get("postgresql") or {}).get("parameters") or {}
    limit = str(parameters.get("max_connections", "100"))
    if not limit.isdigit():
        problems.add(backend.resource.origin, f"{backend.resource}: max_connections '{limit}' is not a number", context)
        return
    limit = int(limit)
    needed, parts = 0, []
    for pod, _, entries in conveyor_pods:
        for container, _ in entries:
            if container.binary == "conveyor":
                continue
            pool = container.setting("CONVEYOR_PG_POOL_SIZE")
            if pool is None or not str(pool).isdigit():
                continue
            if container.binary == "conveyor-worker":
                scalers = [resource for resource in resources
                           if resource.kind in ("ScaledObject", "HorizontalPodAutoscaler")
                           and ((resource.doc.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == pod.name]
                counts = [(scaler.doc.get("spec") or {}).get("maxReplicaCount", 100) if scaler.kind == "ScaledObject"
                          else (scaler.doc.get("spec") or {}).get("maxReplicas", 1) for scaler in scalers]
                replicas = max(counts) if counts else (pod.doc.get("spec") or {}).get("replicas", 1)
                each = int(pool)
            else:
                replicas = (pod.doc.get("spec") or {}).get("replicas", 1)
                each = int(pool) + 3
            needed += replicas * each
            parts.append(f"{replicas} x {each} ({container.binary})")
    if needed > limit:
        problems.add(backend.resource.origin, f"{backend.resource}: max_connections {limit} is below what Conveyor "
                                              f"may open on the primary: {' + '.join(parts)} = {needed}", context)


def check_k8s(resources, context, binaries, dockerfile, problems, stats):
    families = binaries.families()
    conveyor_pods = []  # (resource, labels, [(Container, raw container)])
    backends = backends_of(resources)
    # The resources, and what the operators will make from the custom resources among them.
    known = resources + [made for backend in backends for made in backend.derived()]
    provides_secrets = any(resource.kind == "Secret" for resource in known)
    referenced_configs = set()

    for resource in resources:
        if resource.kind not in POD_KINDS:
            continue
        spec = pod_spec(resource)
        entries = []
        for raw in containers_of(resource):
            label = f"{resource} container {raw.get('name')}"
            argv = argv_of(raw, dockerfile)
            env = {}
            secret_refs = {}  # env name -> (Secret, key)
            envfrom_names, envfrom_complete = set(), True
            for entry in raw.get("env") or []:
                source = entry.get("valueFrom") or {}
                env[entry.get("name")] = None if source else str(entry.get("value", ""))
                secret_ref = source.get("secretKeyRef")
                if secret_ref:
                    secret_refs[entry.get("name")] = (secret_ref.get("name"), secret_ref.get("key"))
                if secret_ref and provides_secrets:
                    secret = find(known, "Secret", secret_ref.get("name"))
                    keys = secret_keys(secret)
                    if secret is None and not secret_ref.get("optional"):
                        problems.add(resource.origin, f"{label}: {entry.get('name')} refers to Secret "
                                                      f"{secret_ref.get('name')}, which is not provided", context)
                    elif secret is not None and secret_ref.get("key") not in keys:
                        problems.add(resource.origin, f"{label}: {entry.get('name')} refers to key "
                                                      f"{secret_ref.get('key')} missing from Secret "
                                                      f"{secret_ref.get('name')}", context)
                config_ref = source.get("configMapKeyRef")
                if config_ref:
                    referenced_configs.add(config_ref.get("name"))
                    config = find(resources, "ConfigMap", config_ref.get("name"))
                    if config is not None:
                        env[entry.get("name")] = (config.doc.get("data") or {}).get(config_ref.get("key"))
            for source in raw.get("envFrom") or []:
                prefix = source.get("prefix", "")
                for ref_kind, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    ref = source.get(ref_kind)
                    if not ref:
                        continue
                    found = find(known, kind, ref.get("name"))
                    if kind == "ConfigMap":
                        referenced_configs.add(ref.get("name"))
                    if found is None:
                        envfrom_complete = False
                        if kind == "ConfigMap" or provides_secrets:
                            if not ref.get("optional"):
                                problems.add(resource.origin, f"{label}: envFrom {kind} {ref.get('name')} "
                                                              "is not in the resources", context)
                        continue
                    data = dict(found.doc.get("data") or {})
                    data.update(found.doc.get("stringData") or {})
                    for key, value in data.items():
                        envfrom_names.add(prefix + key)
                        env.setdefault(prefix + key, None if kind == "Secret" else str(value))
            check_references(resource.origin, label, raw, envfrom_names, envfrom_complete, problems, context)
            if not is_conveyor(argv):
                names = [name for name in env if str(name).startswith("CONVEYOR_")]
                if names:
                    problems.add(resource.origin, f"{label} sets {', '.join(sorted(names))} but runs no Conveyor "
                                                  f"binary ({' '.join(argv) or 'no command'})", context)
                continue
            stats["containers"] += 1
            container = Container(resource.origin, label, argv, env, binaries, problems, context, dockerfile.env)
            container.check_env(stats)
            entries.append((container, raw))
            check_container_ports(container, raw, stats)
            check_cpu_threads(container, raw)
            if container.binary in ("conveyor-worker", "conveyor-scheduler") and resource.kind != "Pod":
                grace = spec.get("terminationGracePeriodSeconds", 30)
                check_grace(container, f"terminationGracePeriodSeconds {grace}", float(grace),
                            pre_stop_seconds(raw), stats)
            check_container_urls(container, resource, known, backends, secret_refs, stats)
        if entries:
            conveyor_pods.append((resource, pod_labels(resource), entries))
    check_backends(resources, backends, conveyor_pods, problems, context, stats)

    for resource in resources:
        keys = [key for key in (resource.doc.get("data") or {}) if str(key).startswith("CONVEYOR_")]
        if resource.kind == "ConfigMap" and keys and resource.name not in referenced_configs:
            problems.add(resource.origin, f"ConfigMap {resource.name} sets {', '.join(sorted(keys))}, but no "
                                          "container reads it (envFrom or configMapKeyRef)", context)

    def named_or_numbered(port, pods, what, where):
        """Checks a port (number or name) that must reach the HTTP port of the selected Conveyor pods."""
        for pod, _, entries in pods:
            for container, raw in entries:
                expected = container.http_port()
                if expected is None:
                    continue
                stats["ports"] += 1
                if isinstance(port, int) or str(port).isdigit():
                    if int(port) != expected:
                        problems.add(where, f"{what} is {port}, but {pod} runs {container.binary} on "
                                            f"{expected}", context)
                else:
                    numbers = [entry.get("containerPort") for entry in raw.get("ports") or []
                               if entry.get("name") == port]
                    if not numbers:
                        problems.add(where, f"{what} names port '{port}', which {pod} container "
                                            f"{raw.get('name')} does not declare", context)
                    elif numbers[0] != expected:
                        problems.add(where, f"{what} '{port}' is {numbers[0]} in {pod}, but "
                                            f"{container.binary} listens on {expected}", context)

    for resource in resources:
        where = resource.origin
        spec = resource.doc.get("spec") or {}
        if resource.kind == "PodMonitor":
            selector = spec.get("selector") or {}
            operated = [backend for backend in backends if selector.get("matchLabels")
                        and selector_matches(selector, backend.pod_labels)]
            if operated:
                # The pods of an operator-run backend: its named metrics port and paths (check g).
                backend = operated[0]
                for endpoint in spec.get("podMetricsEndpoints") or []:
                    stats["ports"] += 1
                    port = endpoint.get("port", endpoint.get("targetPort"))
                    if port not in backend.pod_ports and port not in backend.pod_ports.values():
                        problems.add(where, f"{resource} scrapes port {port}, which {backend.resource}'s pods do not "
                                            f"have ({', '.join(sorted(backend.pod_ports))})", context)
                    if endpoint.get("path", "/metrics") not in backend.metrics_paths:
                        problems.add(where, f"{resource} scrapes {endpoint.get('path')}, none of "
                                            f"{', '.join(sorted(backend.metrics_paths))}", context)
                continue
            pods = [pod for pod in conveyor_pods if selector_matches(spec.get("selector"), pod[1])]
            if not pods:
                problems.add(where, f"{resource} selects no Conveyor pod", context)
            for endpoint in spec.get("podMetricsEndpoints") or []:
                port = endpoint.get("port", endpoint.get("targetPort"))
                named_or_numbered(port, pods, f"{resource} port", where)
                if endpoint.get("path", "/metrics") != "/metrics":
                    problems.add(where, f"{resource} scrapes {endpoint.get('path')}, not /metrics", context)
        elif resource.kind == "Service" and spec.get("selector"):
            pods = [pod for pod in conveyor_pods if selector_matches({"matchLabels": spec.get("selector")}, pod[1])]
            for port in spec.get("ports") or []:
                if pods:
                    named_or_numbered(port.get("targetPort", port.get("port")), pods,
                                      f"{resource} targetPort", where)
        elif resource.kind == "NetworkPolicy":
            pods = [pod for pod in conveyor_pods if selector_matches(spec.get("podSelector"), pod[1])
                    and any(container.binary != "conveyor" for container, _ in pod[2])]
            for rule in spec.get("ingress") or []:
                for port in rule.get("ports") or []:
                    if "port" in port:
                        named_or_numbered(port["port"], pods, f"{resource} ingress port", where)
        elif resource.kind == "ScaledObject":
            stats["autoscalers"] += 1
            check_scale_target(resource, spec.get("scaleTargetRef") or {}, conveyor_pods, problems, context)
            consumed = worker_queues(resource, spec.get("scaleTargetRef") or {}, conveyor_pods)
            for trigger in spec.get("triggers") or []:
                metadata = trigger.get("metadata") or {}
                stats["triggers"] += 1
                if trigger.get("type") == "rabbitmq":
                    queue = metadata.get("queueName", "")
                    # A family's priority bands: conveyor.<family> (normal), conveyor.<family>.high and .low.
                    band = re.fullmatch(r"conveyor\.([a-z_]+)(\.high|\.low)?", queue)
                    family = band.group(1) if band else None
                    if family not in families:
                        problems.add(where, f"{resource} rabbitmq trigger on '{queue}': not a job queue "
                                            f"(conveyor.<family>[.high|.low], families {','.join(families)})",
                                     context)
                    elif consumed is not None and family not in consumed:
                        problems.add(where, f"{resource} scales on {queue}, but the workers do not consume "
                                            f"{family} (CONVEYOR_QUEUES={','.join(consumed)})", context)
                    auth = (trigger.get("authenticationRef") or {}).get("name")
                    if auth and find(resources, trigger["authenticationRef"].get("kind", "TriggerAuthentication"),
                                     auth) is None:
                        problems.add(where, f"{resource} trigger refers to TriggerAuthentication {auth}, "
                                            "which is not in the resources", context)
                if trigger.get("type") == "prometheus":
                    query = str(metadata.get("query", ""))
                    if "conveyor_workers_needed" in query:
                        if not re.match(r"^\s*max\s*(\(|by|without)", query):
                            problems.add(where, f"{resource} query '{query}' must aggregate "
                                                "conveyor_workers_needed with max(): every pod reports the same "
                                                "cluster-wide estimate", context)
                        if trigger.get("metricType", "AverageValue") != "AverageValue":
                            problems.add(where, f"{resource} trigger on conveyor_workers_needed must use "
                                                "metricType AverageValue (replicas = value / threshold)", context)
        elif resource.kind == "TriggerAuthentication" and provides_secrets:
            refs = {}
            for ref in spec.get("secretTargetRef") or []:
                secret = find(known, "Secret", ref.get("name"))
                keys = secret_keys(secret)
                if secret is None or ref.get("key") not in keys:
                    problems.add(where, f"{resource} needs key {ref.get('key')} of Secret {ref.get('name')}, "
                                        "which is not provided", context)
                    continue
                value = dict(secret.doc.get("data") or {}, **(secret.doc.get("stringData") or {})).get(ref.get("key"))
                refs[ref.get("parameter")] = (ref.get("name"), ref.get("key"), value)
            if backends and "host" in refs and refs["host"][2]:
                # KEDA's broker address: one of the backends', under its full name (KEDA runs in its own
                # namespace), and a user from that backend's Secret.
                host_url = str(refs["host"][2])
                parts = split_url(host_url)
                index = HostIndex(backends, [other for other in known if other.kind == "Service"],
                                  (resource.doc.get("metadata") or {}).get("namespace"))

                def report(message, resource=resource, where=where):
                    problems.add(where, f"{resource}: {message}", context)

                check_url(report, f"host (Secret {refs['host'][0]})", host_url, index, None, stats)
                for host, _ in (parts[2] if parts else []):
                    if index.namespace and "." not in host:
                        report(f"host {host} is a short name, which resolves in KEDA's namespace, not in "
                               f"{index.namespace}: use {host}.{index.namespace}.svc")
                owner = next((index.lookup(host)[0] for host, _ in (parts[2] if parts else [])
                              if index.lookup(host) and index.lookup(host)[0]), None)
                user_refs = [refs[key] for key in ("username", "password") if key in refs]
                if owner is not None and user_refs and any(ref[0] != owner.secret for ref in user_refs):
                    report(f"username/password come from Secret {user_refs[0][0]}, but the host belongs to "
                           f"{owner.resource}, whose user is in Secret {owner.secret}")
                elif owner is not None and not user_refs and (parts and not parts[1]):
                    report(f"gives KEDA no user for {owner.resource} (username and password from Secret "
                           f"{owner.secret})")
        elif resource.kind == "HorizontalPodAutoscaler":
            stats["autoscalers"] += 1
            check_scale_target(resource, spec.get("scaleTargetRef") or {}, conveyor_pods, problems, context)
            for metric in spec.get("metrics") or []:
                external = metric.get("external") or {}
                if (external.get("metric") or {}).get("name") == "conveyor_workers_needed":
                    target = external.get("target") or {}
                    if target.get("type") != "AverageValue":
                        problems.add(where, f"{resource} must target conveyor_workers_needed as AverageValue "
                                            "(replicas = value / averageValue)", context)

    targets = {}
    for resource in resources:
        if resource.kind in ("ScaledObject", "HorizontalPodAutoscaler"):
            name = (resource.doc.get("spec") or {}).get("scaleTargetRef", {}).get("name")
            targets.setdefault(name, []).append(resource)
    for name, owners in targets.items():
        if len(owners) > 1:
            problems.add(context, f"Deployment {name} is scaled by {len(owners)} autoscalers "
                                  f"({', '.join(map(str, owners))}); they would fight")


def check_container_ports(container, raw, stats):
    if container.binary == "conveyor":
        return
    expected = container.http_port()
    for entry in raw.get("ports") or []:
        stats["ports"] += 1
        if entry.get("containerPort") != expected:
            container.report(f"containerPort {entry.get('containerPort')} is not {container.binary}'s HTTP port "
                             f"{expected}")
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = raw.get(probe_name)
        if not probe:
            continue
        action = probe.get("httpGet") or probe.get("tcpSocket")
        if not action:
            continue
        stats["probes"] += 1
        port = action.get("port")
        if isinstance(port, int) or str(port).isdigit():
            number = int(port)
        else:
            number = next((entry.get("containerPort") for entry in raw.get("ports") or []
                           if entry.get("name") == port), None)
            if number is None:
                container.report(f"{probe_name} names port '{port}', which the container does not declare")
                continue
        if number != expected:
            container.report(f"{probe_name} probes port {number}, but {container.binary} listens on {expected}")
        if "httpGet" in probe:
            path = probe["httpGet"].get("path", "/")
            if path not in PROBE_PATHS:
                container.report(f"{probe_name} path {path} is not one of {', '.join(sorted(PROBE_PATHS))}")
            elif probe_name == "livenessProbe" and path == "/readyz":
                container.report("livenessProbe uses /readyz: a broker or database outage would restart every "
                                 "pod; use /healthz")


def check_cpu_threads(container, raw):
    threads = container.setting("CONVEYOR_THREADS")
    limit = ((raw.get("resources") or {}).get("limits") or {}).get("cpu")
    if threads is None or limit is None or not str(threads).isdigit():
        return
    cores = cpu_cores(limit)
    if int(threads) == 0:
        container.report("CONVEYOR_THREADS=0 starts one thread per core of the node, not of the CPU limit "
                         f"({limit}); set it to the limit")
    elif cores is not None and cores >= 1 and int(threads) != round(cores):
        container.report(f"CONVEYOR_THREADS={threads} does not match the CPU limit {limit}")


def check_grace(container, what, stop_seconds, pre_stop, stats):
    stats["grace_checks"] += 1
    grace = container.duration("CONVEYOR_SHUTDOWN_GRACE")
    if grace is None:  # an unparsable value; check_env has reported it
        return
    if container.binary == "conveyor-worker":
        timeout = container.duration("CONVEYOR_JOB_TIMEOUT")
        if timeout is not None and timeout > grace:
            container.report(f"CONVEYOR_SHUTDOWN_GRACE {grace:g}s is shorter than CONVEYOR_JOB_TIMEOUT {timeout:g}s: "
                             "a drain would cut jobs off")
        for job_type, variable, extra in DERIVED_DEADLINES:
            base = container.duration(variable)
            if base is not None and base + extra > grace:
                container.report(f"CONVEYOR_SHUTDOWN_GRACE {grace:g}s is shorter than {job_type}'s deadline "
                                 f"({variable} + {extra:g}s = {base + extra:g}s)")
        tail = WORKER_DRAIN_TAIL_S
    else:
        tail = SCHEDULER_DRAIN_TAIL_S
    needed = pre_stop + grace + tail
    if stop_seconds < needed:
        container.report(f"{what} is too short: the drain takes up to {needed:g}s (preStop {pre_stop:g}s + "
                         f"CONVEYOR_SHUTDOWN_GRACE {grace:g}s + {tail}s to unwind and close)")


def check_scale_target(resource, ref, conveyor_pods, problems, context):
    kind, name = ref.get("kind", "Deployment"), ref.get("name")
    workers = [pod for pod, _, entries in conveyor_pods
               if any(container.binary == "conveyor-worker" for container, _ in entries)]
    if not any(pod.kind == kind and pod.name == name for pod in workers):
        problems.add(resource.origin, f"{resource} scales {kind}/{name}, which is not the worker Deployment "
                                      f"({', '.join(map(str, workers)) or 'none found'})", context)


def worker_queues(resource, ref, conveyor_pods):
    for pod, _, entries in conveyor_pods:
        if pod.name == ref.get("name"):
            for container, _ in entries:
                if container.binary == "conveyor-worker":
                    value = container.setting("CONVEYOR_QUEUES")
                    return [family.strip() for family in value.split(",")] if value else None
    return None


# ---------------------------------------------------------------------------------------------------------
# Compose and the Dockerfile


def compose_argv(service, dockerfile, conveyor_images):
    command = service.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    entrypoint = service.get("entrypoint")
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if entrypoint:
        return [str(word) for word in entrypoint + (command or [])]
    if command:
        return [str(word) for word in command]
    if service.get("image") in conveyor_images and dockerfile.cmd:
        return list(dockerfile.cmd)
    return []


def compose_env(service, folder, problems, where):
    env = {}
    env_files = service.get("env_file") or []
    for entry in [env_files] if isinstance(env_files, (str, dict)) else env_files:
        path = folder / (entry["path"] if isinstance(entry, dict) else entry)
        if path.is_file():
            env.update(read_env_file(path))
        else:
            problems.add(where, f"env_file {path} does not exist")
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
    for key, value in environment.items():
        env[key] = None if value is None else str(value)
    return env


def container_ports_of(entry):
    if isinstance(entry, dict):
        return [int(entry["target"])] if "target" in entry else []
    text = str(entry).split("/")[0]
    container = text.rsplit(":", 1)[-1]
    if "-" in container:
        low, high = container.split("-", 1)
        return list(range(int(low), int(high) + 1))
    return [int(container)]


def check_compose(binaries, dockerfile, problems, stats):
    files = sorted(path for path in COMPOSE.glob("*.y*ml") if path.stem in ("compose", "docker-compose"))
    for path in files:
        documents = load_yaml_documents(path, problems)
        if not documents:
            continue
        stats["compose_files"] += 1
        services = documents[0].get("services") or {}
        where = rel(path)
        conveyor_images = set()
        for service in services.values():
            build = service.get("build")
            if isinstance(build, dict):
                context = (path.parent / build.get("context", ".")).resolve()
                if not context.is_dir():
                    problems.add(where, f"build context {build.get('context')} does not exist")
                dockerfile_path = build.get("dockerfile")
                if dockerfile_path and not (context / dockerfile_path).is_file():
                    problems.add(where, f"dockerfile {dockerfile_path} does not exist in {build.get('context')}")
                if dockerfile_path and (context / dockerfile_path).resolve() == DOCKERFILE.resolve():
                    conveyor_images.add(service.get("image"))
        ports_of_service = {}
        for name, service in services.items():
            label = f"service {name}"
            for volume in service.get("volumes") or []:
                source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
                if source and source.startswith((".", "/")) and not (path.parent / source).exists():
                    problems.add(where, f"{label}: bind mount source {source} does not exist")
            argv = compose_argv(service, dockerfile, conveyor_images)
            env = compose_env(service, path.parent, problems, where)
            if not is_conveyor(argv):
                names = [key for key in env if key.startswith("CONVEYOR_")]
                if names:
                    problems.add(where, f"{label} sets {', '.join(sorted(names))} but runs no Conveyor binary")
                continue
            stats["containers"] += 1
            container = Container(where, label, argv, env, binaries, problems, None, dockerfile.env)
            container.check_env(stats)
            if container.binary == "conveyor":
                continue
            expected = container.http_port()
            ports_of_service[name] = expected
            for entry in list(service.get("expose") or []) + list(service.get("ports") or []):
                for port in container_ports_of(entry):
                    stats["ports"] += 1
                    if port != expected:
                        container.report(f"exposes container port {port}, but {container.binary} listens on "
                                         f"{expected}")
            stop = parse_duration(service.get("stop_grace_period", "10s"))
            check_grace(container, f"stop_grace_period {service.get('stop_grace_period', '10s (default)')}",
                        stop or 0.0, 0.0, stats)
        check_compose_prometheus(path, services, ports_of_service, problems, stats)
        check_compose_grafana(path, services, problems)


def host_path(compose_path, service, container_path):
    """The host path a container path of a compose service is mounted from, or None."""
    best = None
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source"), volume.get("target")
        else:
            parts = str(volume).split(":")
            if len(parts) < 2:
                continue
            source, target = parts[0], parts[1]
        if not source or not source.startswith((".", "/")):
            continue
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[1]):
                best = (source, target)
    if best is None:
        return None
    return (compose_path.parent / best[0] / os.path.relpath(container_path, best[1])).resolve()


def check_compose_prometheus(compose_path, services, ports_of_service, problems, stats):
    where = rel(compose_path)
    for name, service in services.items():
        if "prom/prometheus" not in str(service.get("image", "")):
            continue
        command = service.get("command") or []
        config_in_container = next((word.split("=", 1)[1] for word in command
                                    if str(word).startswith("--config.file=")), "/etc/prometheus/prometheus.yml")
        config_path = host_path(compose_path, service, config_in_container)
        if config_path is None or not config_path.is_file():
            problems.add(where, f"service {name}: its config {config_in_container} is not mounted from a file")
            continue
        documents = load_yaml_documents(config_path, problems)
        config = documents[0] if documents else {}
        for rule_file in config.get("rule_files") or []:
            resolved = host_path(compose_path, service, rule_file)
            if resolved is None or not resolved.is_file():
                problems.add(rel(config_path), f"rule file {rule_file} is not mounted into service {name}")
        for job in config.get("scrape_configs") or []:
            targets = []
            for sd in job.get("dns_sd_configs") or []:
                targets += [(host, sd.get("port")) for host in sd.get("names") or []]
            for static in job.get("static_configs") or []:
                for target in static.get("targets") or []:
                    host, _, port = str(target).rpartition(":")
                    targets.append((host, int(port) if port.isdigit() else None))
            for host, port in targets:
                if host in ("localhost", "127.0.0.1"):
                    continue
                if host not in services:
                    problems.add(rel(config_path), f"job {job.get('job_name')} scrapes '{host}', which is no "
                                                   "compose service")
                elif host in ports_of_service:
                    stats["ports"] += 1
                    if port != ports_of_service[host]:
                        problems.add(rel(config_path), f"job {job.get('job_name')} scrapes {host}:{port}, but it "
                                                       f"listens on {ports_of_service[host]}")


def check_compose_grafana(compose_path, services, problems):
    where = rel(compose_path)
    for name, service in services.items():
        if "grafana" not in str(service.get("image", "")):
            continue
        provisioning = host_path(compose_path, service, "/etc/grafana/provisioning/dashboards")
        if provisioning is None or not provisioning.is_dir():
            problems.add(where, f"service {name}: no dashboard provisioning mounted")
            continue
        for provider_file in sorted(provisioning.glob("*.y*ml")):
            for document in load_yaml_documents(provider_file, problems):
                for provider in document.get("providers") or []:
                    folder = (provider.get("options") or {}).get("path")
                    resolved = host_path(compose_path, service, folder) if folder else None
                    if resolved is None or not any(resolved.glob("*.json")):
                        problems.add(rel(provider_file), f"provider {provider.get('name')} loads {folder}, "
                                                         "which is not mounted from a folder of dashboards in "
                                                         f"service {name}")


def check_dockerfile(dockerfile, binaries, problems, stats):
    where = rel(DOCKERFILE)
    if dockerfile.cmd and not is_conveyor(dockerfile.cmd):
        problems.add(where, f"CMD {dockerfile.cmd} does not run a Conveyor binary")
    known = {binary: binaries.help([binary]).options for binary in BINARIES}
    for variable, value in dockerfile.env.items():
        if not variable.startswith("CONVEYOR_"):
            continue
        stats["variables"] += 1
        users = [binary for binary in BINARIES if variable in known[binary]]
        if not users:
            problems.add(where, f"ENV {variable} is not an option of any of {', '.join(BINARIES)}")
        for binary in users:
            error = known[binary][variable].value_error(value)
            if error:
                problems.add(where, f"ENV {variable}: {error} ({binary})")
    defaults = {int(binaries.help([binary]).flag_default("--http-port") or 0)
                for binary in ("conveyor-worker", "conveyor-scheduler")}
    if set(dockerfile.expose) != defaults:
        problems.add(where, f"EXPOSE {' '.join(map(str, dockerfile.expose))} differs from the binaries' HTTP ports "
                            f"{' '.join(map(str, sorted(defaults)))}")
    stats["ports"] += len(dockerfile.expose)
    user = (dockerfile.user or "").split(":")[0]
    if not user.isdigit() or int(user) == 0:
        problems.add(where, f"USER {dockerfile.user} must be a numeric non-root uid (runAsNonRoot can only "
                            "verify a number)")


# ---------------------------------------------------------------------------------------------------------
# Metric names for --metric-names


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan", "atan2"}


def promql_metric_names(query):
    text = re.sub(r"<<[^>]*>>", " ", str(query))
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = []
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue
        if text[match.end():].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.append(match.group())
    return names


def autoscaling_queries(renders):
    queries = []
    for resources in renders:
        for resource in resources:
            if resource.kind == "ScaledObject":
                for trigger in (resource.doc.get("spec") or {}).get("triggers") or []:
                    if trigger.get("type") == "prometheus":
                        queries.append((resource.origin, (trigger.get("metadata") or {}).get("query", "")))
    for path in sorted(K8S.rglob("*.y*ml")):
        for document in load_yaml_documents(path, Problems()):
            if not isinstance(document, dict) or "kind" in document:
                continue
            rules = []
            for key in ("rules", "externalRules", "resourceRules"):
                value = document.get(key)
                if isinstance(value, list):
                    rules += value
                elif isinstance(value, dict):  # Helm values: rules: {external: [...], custom: [...]}
                    for sub in ("external", "custom"):
                        rules += value.get(sub) or []
            for rule in rules:
                for key in ("seriesQuery", "metricsQuery"):
                    if rule.get(key):
                        queries.append((rel(path), rule[key]))
    return queries


def check_adapter_rules(problems):
    for path in sorted(K8S.rglob("*.y*ml")):
        for document in load_yaml_documents(path, Problems()):
            if not isinstance(document, dict) or "kind" in document:
                continue
            for rule in document.get("externalRules") or []:
                if "conveyor_workers_needed" in str(rule.get("seriesQuery", "")):
                    if not re.match(r"^\s*max\s*(\(|by|without)", str(rule.get("metricsQuery", ""))):
                        problems.add(rel(path), f"metricsQuery '{rule.get('metricsQuery')}' must aggregate "
                                                "conveyor_workers_needed with max()")


# ---------------------------------------------------------------------------------------------------------


def kustomizations():
    entries = []
    for path in sorted(K8S.rglob("kustomization.y*ml")):
        documents = load_yaml_documents(path, Problems())
        kind = documents[0].get("kind", "Kustomization") if documents and isinstance(documents[0], dict) else None
        entries.append((path.parent, kind))
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", help="folder with conveyor-worker, conveyor-scheduler and conveyor")
    parser.add_argument("--metric-names", action="store_true",
                        help="print the metric names the autoscaling queries use, one per line, and exit")
    arguments = parser.parse_args()

    problems = Problems()
    kustomize = Kustomize(problems)
    folders = kustomizations()
    renders = [(folder, kustomize.render(folder)) for folder, kind in folders if kind != "Component"]

    if arguments.metric_names:
        names = sorted({name for _, query in autoscaling_queries([resources for _, resources in renders])
                        for name in promql_metric_names(query)})
        if problems.lines or not names:
            for line in problems.lines:
                print(f"FAIL {line}", file=sys.stderr)
            if not names:
                print("check_manifests: no metric names found in the autoscaling queries", file=sys.stderr)
            return 1
        print("\n".join(names))
        return 0
    if not arguments.bin_dir:
        parser.error("--bin-dir is required (except with --metric-names)")

    binaries = Binaries(arguments.bin_dir)
    stats = dict.fromkeys(("yaml_files", "yaml_documents", "json_files", "containers", "variables", "ports",
                           "probes", "grace_checks", "autoscalers", "triggers", "backends", "urls",
                           "compose_files"), 0)
    check_parse(problems, stats)
    for folder, kind in folders:
        if kind == "Component" and folder.resolve() not in kustomize.components_used:
            problems.add(rel(folder), "is a kustomize Component that no kustomization uses, so its patches "
                                      "were not checked")
    dockerfile = Dockerfile(problems)
    check_dockerfile(dockerfile, binaries, problems, stats)
    for folder, resources in renders:
        check_k8s(resources, rel(folder), binaries, dockerfile, problems, stats)
    check_adapter_rules(problems)
    check_compose(binaries, dockerfile, problems, stats)

    for line in problems.lines:
        print(f"FAIL {line}")
    print(f"check_manifests: {stats['yaml_files']} YAML files ({stats['yaml_documents']} documents) and "
          f"{stats['json_files']} JSON files parsed; {len(renders)} kustomizations rendered "
          f"({', '.join(rel(folder) for folder, _ in renders)}); {stats['containers']} Conveyor containers, "
          f"{stats['variables']} CONVEYOR_* settings checked against --help of {', '.join(BINARIES)}; "
          f"{stats['ports']} ports and {stats['probes']} probes; {stats['grace_checks']} grace periods; "
          f"{stats['autoscalers']} autoscalers with {stats['triggers']} triggers; "
          f"{stats['backends']} operator-run backends and {stats['urls']} URLs to them; "
          f"{stats['compose_files']} compose file(s) and the Dockerfile")
    if problems.lines:
        print(f"check_manifests: {len(problems.lines)} problem(s)")
        return 1
    print("check_manifests: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

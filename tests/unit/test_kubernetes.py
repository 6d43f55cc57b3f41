"""deploy/kubernetes/: the manifests, checked without a Kubernetes cluster (none runs here).

Every object is validated against Kubernetes' own OpenAPI schemas (the kubernetes-validate
package ships them; strict: an unknown field fails) for the oldest and newest release it
knows. Then the manifests are held to the programs they run: each container's argv is parsed
by the real argparse of its command, and loaded as the real settings with the ConfigMaps'
environment and the Secrets that make_secrets.py makes written where the pods mount them (so
every file a flag names exists and loads: certificates, keys, auth files, the peer secret,
etcd's password); the certificates are checked in TLS handshakes with the names the pods
really dial; the probes, hooks and init script are `memring` commands its parser accepts.
Last, the cluster's shape: etc/cluster.toml's shards and settings, one StatefulSet and one
PodDisruptionBudget per shard, labels and selectors that match, and a ServiceMonitor per
metrics Service.
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import re
import shlex
import ssl
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as validate_utils

from memring.backend import settings as backend_settings
from memring.cluster import cli, etcd_security
from memring.proxy import settings as proxy_settings
from tests.helpers.kubernetes_manifests import (
    DEPLOY,
    NAMESPACE,
    ROOT,
    Pod,
    config_map,
    containers,
    expand,
    first_pod,
    flags,
    load_make_secrets,
    manifest_files,
    named,
    objects,
    of_kind,
    pod_env,
    prepare,
    program_containers,
    shard_sets,
    workloads,
)

pytestmark = pytest.mark.unit

CLUSTER_FILE = ROOT / "etc" / "cluster.toml"
# the oldest and the newest Kubernetes whose schemas kubernetes-validate ships
VERSIONS = (validate_utils.all_versions()[0], validate_utils.latest_version())
CRD_KINDS = {"ServiceMonitor"}  # Prometheus Operator's: no schema in Kubernetes' own
PROGRAMS = {"memring-backend": backend_settings, "memring-proxy": proxy_settings}


@cache
def cluster_file() -> dict[str, Any]:
    return tomllib.loads(CLUSTER_FILE.read_text())


def own_env(workload: dict[str, Any], container: dict[str, Any],
            pod: str | None = None) -> dict[str, str]:
    """The container's own env in the workload's first pod (or the pod named `pod`)."""
    return pod_env(container, Pod(pod) if pod else first_pod(workload))


# --- the schemas --------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    validated = []
    for obj in objects():
        if obj["kind"] in CRD_KINDS:
            with pytest.raises(validate_utils.SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        validated.append(obj["kind"])
    print(f"\nKubernetes {version}: {len(validated)} objects validated (strict), "
          f"{len(objects()) - len(validated)} of kinds without a schema here ({CRD_KINDS})")
    assert len(validated) >= 18


def test_the_validation_fails_on_a_misspelt_field() -> None:
    """The check above can fail: a field the schema lacks is an error in strict mode."""
    shard = copy.deepcopy(shard_sets()[0])
    shard["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(validate_utils.ValidationError):
        kubernetes_validate.validate(shard, VERSIONS[-1], strict=True)


def test_the_secrets_validate(secrets: dict[str, dict[str, Any]]) -> None:
    for obj in secrets.values():
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


def test_every_object_in_the_namespace_and_kustomization_lists_the_files() -> None:
    for obj in objects():
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACE
    # every file but monitoring.yaml (the ServiceMonitor kind exists only with the operator)
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in manifest_files() if p.name != "monitoring.yaml")
    assert {o["kind"] for o in yaml.safe_load_all((DEPLOY / "monitoring.yaml").read_text())} \
        == CRD_KINDS


# --- the Secrets make_secrets.py makes, mounted as the pods mount them -----------------------


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    made = load_make_secrets().make(tmp_path_factory.mktemp("secrets"), NAMESPACE,
                                    "cluster.local")
    return {obj["metadata"]["name"]: obj for obj in made}


def test_every_secret_a_pod_mounts_is_made(secrets: dict[str, dict[str, Any]]) -> None:
    mounted = {volume["secret"]["secretName"] for w in workloads()
               for volume in w["spec"]["template"]["spec"].get("volumes", [])
               if "secret" in volume}
    assert mounted == set(secrets)
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])} | {
            c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (workload["metadata"]["name"], mount)


def running_as(workload: dict[str, Any], container: dict[str, Any], root: Path,
               secrets: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
               ) -> list[str]:
    """Set up the container's environment and files here; its args after $(VAR) expansion."""
    prepared = prepare(workload, container, first_pod(workload), root, secrets)
    for name in [n for n in os.environ if n.startswith("MEMRING_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(root))  # no state file of `memring up`
    for name, value in prepared.env.items():
        monkeypatch.setenv(name, value)
    return prepared.argv[len(container["command"]):]


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_servers_load_their_settings_from_the_manifests(
        program: str, secrets: dict[str, dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each backend and proxy container's flags, environment and mounted files are what the
    real settings loader accepts: TLS contexts build, every file loads; and the ConfigMap's
    variables are read (their values show in the settings)."""
    found = program_containers(program)
    assert found
    for workload, container in found:
        root = tmp_path / workload["metadata"]["name"]
        argv = running_as(workload, container, root, secrets, monkeypatch)
        loaded = PROGRAMS[program].load_settings(argv)
        shared = config_map("memring-env")
        assert loaded.etcd == shared["MEMRING_ETCD"]
        assert loaded.cluster == shared["MEMRING_CLUSTER"] == cluster_file()["name"]
        assert loaded.log_format == shared["MEMRING_LOG_FORMAT"]
        assert loaded.etcd_user == shared["MEMRING_ETCD_USER"]
        for field in ("etcd_ca", "etcd_cert", "etcd_key", "etcd_password_file"):
            assert Path(getattr(loaded, field)).is_file(), field
        assert loaded.etcd_security.check(loaded.etcd) == "https"
        assert loaded.tls and loaded.auth_file


def test_every_variable_of_the_shared_config_map_is_read() -> None:
    """memring-env's keys: each is a setting of both servers (MEMRING_<FIELD>) and one the
    `memring` command reads (the probes, the hook and the init job run it)."""
    shared = set(config_map("memring-env"))
    backend = {"MEMRING_" + f.upper() for f in backend_settings.BackendSettings.__dataclass_fields__}
    proxy = {"MEMRING_" + f.upper() for f in proxy_settings.ProxySettings.__dataclass_fields__}
    assert shared <= backend and shared <= proxy
    cli_source = Path(cli.__file__).read_text()
    read_by_cli = {"MEMRING_" + f.upper() for f in etcd_security.FIELDS} | set(
        re.findall(r'"(MEMRING_[A-Z_]+)"', cli_source))
    assert shared <= read_by_cli, shared - read_by_cli


def test_the_memring_command_takes_etcd_and_security_from_the_environment(
        secrets: dict[str, dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    workload, container = program_containers("memring-backend")[0]
    running_as(workload, container, tmp_path, secrets, monkeypatch)
    args = cli._parser().parse_args(["node", "ready", "memring-s1-0"])
    url, security = cli._etcd_and_security(args)
    assert url == config_map("memring-env")["MEMRING_ETCD"]
    assert security.user == config_map("memring-env")["MEMRING_ETCD_USER"]
    assert security.check(url) == "https"  # the files exist, the password reads
    assert cli._cluster(args) == cluster_file()["name"]


# --- flags: the real parsers ----------------------------------------------------------------


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_flag_is_one_the_program_parses(program: str) -> None:
    parser: argparse.ArgumentParser = PROGRAMS[program]._parser()
    known = parser._option_string_actions  # exact names: argparse would accept abbreviations
    for workload, container in program_containers(program):
        for flag, value in flags(container["args"]).items():
            assert flag in known, f"{workload['metadata']['name']}: {program} has no {flag}"
            takes_value = known[flag].nargs != 0
            assert takes_value == (value is not None), f"{flag}: value {value!r}"
        parser.parse_args([expand(a, own_env(workload, container))
                           for a in container["args"]])


def memring_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `memring` command the manifests run: probes, hooks, the job."""
    found = []
    for workload, container in containers():
        name = f"{workload['metadata']['name']}/{container['name']}"
        for where, handler in (("readinessProbe", container.get("readinessProbe")),
                               ("livenessProbe", container.get("livenessProbe")),
                               ("preStop", container.get("lifecycle", {}).get("preStop"))):
            command = (handler or {}).get("exec", {}).get("command")
            if command and command[:2] == ["sh", "-c"]:
                found.append((f"{name} {where}", shlex.split(command[2])))
        command = container.get("command", [])
        if command[:2] == ["sh", "-ec"]:
            for line in command[2].splitlines():
                if line.strip():
                    found.append((f"{name} script", shlex.split(line.split("||")[0])))
    return found


def test_every_memring_command_parses() -> None:
    commands = memring_commands()
    assert len(commands) >= 3 * 2 + 9  # probe and hook of each shard, the init script
    parser = cli._parser()
    for where, argv in commands:
        if argv[0] == "exec":
            argv = argv[1:]
        assert argv[0] == "memring", where
        words = [a.replace("$POD_NAME", "memring-s1-0") for a in argv[1:]]
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse")


def test_the_image_has_every_program_the_manifests_run() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload, container in containers():
        if container["image"].startswith("quay.io/coreos/etcd:"):
            assert re.fullmatch(r"quay\.io/coreos/etcd:v3\.5\.\d+", container["image"])
            continue
        assert container["image"] == f"memring:{version}", workload["metadata"]["name"]
        program = container["command"][0]
        assert program in scripts or program == "sh", program
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "memring", "newTag": version}]


def test_pods_run_as_the_images_user_without_root() -> None:
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        if workload["metadata"]["name"] != "memring-etcd":
            assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["resources"]["limits"]["memory"]


# --- the certificates, in real handshakes -------------------------------------------------------


Certificate = dict[str, Any]


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str | None
              ) -> tuple[Certificate | None, Certificate | None]:
    """A TLS handshake between the two contexts in memory; ssl.SSLError if refused. The
    certificates each end verified: (the client's, as the server saw it; the server's)."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server_end = server.wrap_bio(server_in, server_out, server_side=True)
    client_end = client.wrap_bio(client_in, client_out, server_hostname=host)
    done = {"server": False, "client": False}
    for _ in range(10):  # a handshake takes 2-3 flights
        for side, end in (("client", client_end), ("server", server_end)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        if client_out.pending:
            server_in.write(client_out.read())
        if server_out.pending:
            client_in.write(server_out.read())
        if all(done.values()):
            return server_end.getpeercert(), client_end.getpeercert()
    raise AssertionError("handshake did not finish")


def secret_file(secrets: dict[str, dict[str, Any]], name: str, key: str, root: Path) -> str:
    path = root / name / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(secrets[name]["data"][key]))
    return str(path)


def test_the_proxy_reaches_every_backend_by_its_advertised_name_over_mutual_tls(
        secrets: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The proxy dials the host each backend advertises (`--advertise`) and verifies it
    against the cluster CA; the backend requires the proxy's certificate; a follower's
    certificate names its node id, the pod name (what peer TLS checks)."""
    from memring.backend.replication.peer_tls import certifies

    proxy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    proxy.load_verify_locations(secret_file(secrets, "memring-proxy-tls", "ca.crt", tmp_path))
    proxy.load_cert_chain(secret_file(secrets, "memring-proxy-tls", "tls.crt", tmp_path),
                          secret_file(secrets, "memring-proxy-tls", "tls.key", tmp_path))
    checked = 0
    for shard in shard_sets():
        (container,) = shard["spec"]["template"]["spec"]["containers"]
        given = flags(container["args"])
        tls_secret = f"{shard['metadata']['name']}-tls"
        for ordinal in range(shard["spec"]["replicas"]):
            pod = f"{shard['metadata']['name']}-{ordinal}"
            env = own_env(shard, container, pod)
            host = expand(str(given["--advertise"]), env).rpartition(":")[0]
            backend = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            backend.load_cert_chain(secret_file(secrets, tls_secret, f"{pod}.crt", tmp_path),
                                    secret_file(secrets, tls_secret, f"{pod}.key", tmp_path))
            backend.load_verify_locations(secret_file(secrets, tls_secret, "ca.crt", tmp_path))
            backend.verify_mode = ssl.CERT_REQUIRED  # --tls-verify=require
            shown_by_proxy, shown_by_backend = handshake(backend, proxy, host)
            assert shown_by_proxy is not None  # --tls-verify=require saw the proxy's
            with pytest.raises(ssl.SSLCertVerificationError):  # a name it does not hold
                handshake(backend, proxy, f"other.{host}")
            assert certifies(shown_by_backend, pod)  # what its followers check
            assert expand(str(given["--node-id"]), env) == pod
            checked += 1
    assert checked == sum(s["spec"]["replicas"] for s in shard_sets())


def test_memring_reaches_every_etcd_member_by_the_configured_urls(
        secrets: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The client certificate memring shows etcd chains to etcd's CA and is named after no
    etcd user; each URL of MEMRING_ETCD names a member whose certificate holds that host."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(secret_file(secrets, "memring-etcd-client", "ca.crt", tmp_path))
    client.load_cert_chain(secret_file(secrets, "memring-etcd-client", "tls.crt", tmp_path),
                           secret_file(secrets, "memring-etcd-client", "tls.key", tmp_path))
    urls = config_map("memring-env")["MEMRING_ETCD"].split(",")
    etcd = named("StatefulSet", "memring-etcd")
    assert len(urls) == etcd["spec"]["replicas"] == 3
    for ordinal, url in enumerate(urls):
        member = f"memring-etcd-{ordinal}"
        assert url == f"https://{member}.memring-etcd:2379"
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(secret_file(secrets, "memring-etcd-tls", f"{member}.crt", tmp_path),
                               secret_file(secrets, "memring-etcd-tls", f"{member}.key", tmp_path))
        server.load_verify_locations(secret_file(secrets, "memring-etcd-tls", "ca.crt", tmp_path))
        server.verify_mode = ssl.CERT_REQUIRED  # --client-cert-auth
        shown, _ = handshake(server, client, url.removeprefix("https://").rpartition(":")[0])
        # etcd takes a client certificate's common name for a user: it must be no user's
        assert shown is not None
        common_names = [v for rdn in shown["subject"] for k, v in rdn if k == "commonName"]
        assert common_names == ["memring-etcd-client"]
        assert common_names[0] not in ("root", config_map("memring-env")["MEMRING_ETCD_USER"])
    # a certificate of memring's CA is no etcd client
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.load_verify_locations(secret_file(secrets, "memring-etcd-client", "ca.crt", tmp_path))
    stranger.load_cert_chain(secret_file(secrets, "memring-proxy-tls", "tls.crt", tmp_path),
                             secret_file(secrets, "memring-proxy-tls", "tls.key", tmp_path))
    with pytest.raises(ssl.SSLError):
        handshake(server, stranger, "memring-etcd-2.memring-etcd")


# --- the cluster's shape ----------------------------------------------------------------------


def test_one_statefulset_per_shard_of_the_cluster_file() -> None:
    wanted = {s["id"] for s in cluster_file()["shards"]}
    shards = {}
    for shard in shard_sets():
        (container,) = shard["spec"]["template"]["spec"]["containers"]
        shards[flags(container["args"])["--shard"]] = shard
        assert shard["metadata"]["name"] == f"memring-{flags(container['args'])['--shard']}"
        # a voluntary disruption (PDB of one) must leave at least two copies
        assert shard["spec"]["replicas"] >= max(3, *(s.get("replicas", 1)
                                                     for s in cluster_file()["shards"]))
    assert set(shards) == wanted


def test_shard_files_differ_only_by_the_shard_id() -> None:
    """What docs/kubernetes.md says to do to add a shard gives exactly the other files."""
    first = (DEPLOY / "shard-s1.yaml").read_text()
    files = sorted(DEPLOY.glob("shard-*.yaml"))
    assert len(files) == len(cluster_file()["shards"])
    for path in files:
        shard = path.stem.removeprefix("shard-")
        assert path.read_text() == re.sub(r"\bs1\b", shard, first), path.name


def test_backends_advertise_their_pod_name_and_replicate_as_the_cluster_file_says() -> None:
    config = cluster_file()["config"]
    service = named("Service", "memring-backend")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    for shard in shard_sets():
        assert shard["spec"]["serviceName"] == "memring-backend"
        pod = shard["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        given = flags(container["args"])
        assert given["--node-id"] == "$(POD_NAME)"
        assert own_env(shard, container)["POD_NAME"] == f"{shard['metadata']['name']}-0"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for listen, advertise, port in (("--listen", "--advertise", "memcache"),
                                        ("--peer-listen", "--peer-advertise", "peer")):
            assert given[listen] == f"0.0.0.0:{ports[port]}"
            assert given[advertise] == \
                f"$(POD_NAME).memring-backend.$(POD_NAMESPACE).svc:{ports[port]}"
        assert given["--metrics-listen"] == f"0.0.0.0:{ports['metrics']}"
        assert given["--replication"] in ("auto", config["replication"])
        assert float(str(given["--lease-ttl"])) == config["lease_ttl"]
        # TLS and auth on: clients, replication (mutual TLS and the secret)
        assert {"--tls", "--tls-verify", "--auth-file", "--peer-tls",
                "--peer-secret-file"} <= set(given)
        assert given["--tls-verify"] == "require"
        service_ports = {p["targetPort"]: p["port"] for p in service["spec"]["ports"]}
        assert service_ports == {name: ports[name] for name in service_ports}
        assert set(service_ports) == set(ports)


def test_readiness_is_in_sync_and_the_hook_steps_down() -> None:
    for shard in shard_sets():
        (container,) = shard["spec"]["template"]["spec"]["containers"]
        ready = container["readinessProbe"]["exec"]["command"]
        assert ready == ["sh", "-c", 'exec memring node ready "$POD_NAME"']
        hook = container["lifecycle"]["preStop"]["exec"]["command"]
        assert hook == ["sh", "-c", 'exec memring node step-down "$POD_NAME"']
        assert own_env(shard, container)["POD_NAME"] == first_pod(shard).name
        # the hand-over (at most ~HINT_TTL) and the resign fit in the grace period
        grace = shard["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= cli.HINT_TTL + 10
        assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
        # a rolling update waits for each pod to be ready (in sync) before the next
        assert shard["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_selectors_anti_affinity_and_a_disruption_budget_of_one_per_shard() -> None:
    budgets = of_kind("PodDisruptionBudget")
    for workload in [*shard_sets(), named("StatefulSet", "memring-etcd")]:
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector == {k: v for k, v in workload["spec"]["template"]["metadata"]
                            ["labels"].items() if k in selector}
        (budget,) = [b for b in budgets if b["spec"]["selector"]["matchLabels"] == selector]
        assert budget["spec"]["maxUnavailable"] == 1
        (term,) = workload["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == selector
    # no budget selects pods of two shards
    for budget in budgets:
        matched = [w["metadata"]["name"] for w in workloads() if selects(
            budget["spec"]["selector"]["matchLabels"],
            w["spec"]["template"]["metadata"]["labels"])]
        assert len(matched) == 1, (budget["metadata"]["name"], matched)


def test_proxies_a_deployment_behind_a_service_scaled_by_an_hpa() -> None:
    deployment = named("Deployment", "memring-proxy")
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = named("Service", "memring-proxy")
    assert selects(service["spec"]["selector"], labels)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    given = flags(container["args"])
    assert given["--listen"] == f"0.0.0.0:{ports['memcache']}"
    assert given["--metrics-listen"] == f"0.0.0.0:{ports['metrics']}"
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    # TLS and auth on for clients; mutual TLS, verified, and a user towards the backends
    assert {"--tls", "--auth-file", "--backend-tls", "--backend-tls-cert",
            "--backend-auth-file"} <= set(given)
    assert given["--backend-tls-verify"] == "require"
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "memring-proxy"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_a_service_monitor_for_each_metrics_service() -> None:
    monitors = of_kind("ServiceMonitor")
    scraped = set()
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        (service,) = [s for s in of_kind("Service")
                      if selects(monitor["spec"]["selector"]["matchLabels"],
                                 s["metadata"]["labels"])]
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
        scraped.add(service["metadata"]["name"])
    assert scraped == {"memring-backend", "memring-proxy"}


def test_init_job_writes_the_config_table_and_the_shards() -> None:
    config = cluster_file()["config"]
    written: dict[str, str] = {}
    weights: dict[str, int] = {}
    for _where, argv in memring_commands():
        if argv[1:3] == ["config", "set"]:
            written[argv[3]] = argv[4]
        elif argv[1:3] == ["shard", "add"]:
            weights[argv[3]] = int(argv[argv.index("--weight") + 1])
    assert set(written) == set(config)
    for key, value in config.items():
        assert type(value)(written[key]) == value, key
    assert weights == {s["id"]: s.get("weight", 1) for s in cluster_file()["shards"]}


def test_etcd_members_form_one_tls_cluster() -> None:
    etcd = named("StatefulSet", "memring-etcd")
    (container,) = etcd["spec"]["template"]["spec"]["containers"]
    given = flags(container["args"])
    members = [f"memring-etcd-{i}" for i in range(etcd["spec"]["replicas"])]
    initial = dict(m.split("=", 1) for m in str(given["--initial-cluster"]).split(","))
    assert initial == {m: f"https://{m}.memring-etcd.$(POD_NAMESPACE).svc:2380"
                       for m in members}
    assert given["--name"] == "$(POD_NAME)"
    # its data on the member's volume, in a directory of its own (etcd wants mode 0700)
    (claim,) = etcd["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert str(given["--data-dir"]).startswith(mount["mountPath"] + "/")
    assert given["--initial-advertise-peer-urls"] == \
        "https://$(POD_NAME).memring-etcd.$(POD_NAMESPACE).svc:2380"
    for switch in ("--client-cert-auth", "--peer-client-cert-auth"):
        assert given[switch] is None
    for flag in ("--listen-client-urls", "--listen-peer-urls", "--advertise-client-urls"):
        assert str(given[flag]).startswith("https://")
    service = named("Service", "memring-etcd")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert etcd["spec"]["serviceName"] == "memring-etcd"
    for arg in container["args"]:
        expand(arg, own_env(etcd, container))  # every $(VAR) is defined


@pytest.mark.requires_etcd
def test_every_etcd_flag_is_one_etcd_knows() -> None:
    """Against the installed etcd's --help (Debian's 3.4; the manifest runs 3.5, which kept
    every one of these flags)."""
    import subprocess

    from memring.cluster.etcd_process import find_etcd

    result = subprocess.run([str(find_etcd()), "--help"], capture_output=True, text=True,
                            timeout=30)
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", result.stdout + result.stderr, re.MULTILINE))
    assert len(known) > 50
    (container,) = named("StatefulSet", "memring-etcd")["spec"]["template"]["spec"][
        "containers"]
    assert container["command"] == ["/usr/local/bin/etcd"]
    for flag in flags(container["args"]):
        assert flag in known, f"etcd has no {flag}"


def test_make_secrets_runs_again_without_changing_what_exists(
        secrets: dict[str, dict[str, Any]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    script = load_make_secrets()
    directory = tmp_path / "again"
    assert script.main([str(directory)]) == 0
    assert f"{len(secrets)} Secrets in {directory / 'secrets.yaml'}" in capsys.readouterr().out
    before = (directory / "secrets.yaml").read_text()
    assert script.main([str(directory)]) == 0
    assert (directory / "secrets.yaml").read_text() == before
    assert oct((directory / "secrets.yaml").stat().st_mode & 0o777) == "0o600"
    assert not (directory / "memring-ca" / "ca.key").stat().st_mode & 0o077


def test_make_secrets_names_the_proxies_by_the_extra_hosts_given(tmp_path: Path) -> None:
    made = load_make_secrets().make(tmp_path, NAMESPACE, "cluster.local",
                                    ["cache.example.org", "192.0.2.10"])
    (proxy,) = [o for o in made if o["metadata"]["name"] == "memring-proxy-tls"]
    files = {key: tmp_path / f"proxy.{key}" for key in ("tls.crt", "tls.key", "ca.crt")}
    for key, path in files.items():
        path.write_bytes(base64.b64decode(proxy["data"][key]))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files["tls.crt"], files["tls.key"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(files["ca.crt"])
    for host in ("cache.example.org", "192.0.2.10", "memring-proxy.memring.svc"):
        handshake(server, client, host)

"""A real single-node Kubernetes cluster inside its own namespaces.

::

    host (pytest) ── 127.0.0.1:<free port> ──forward.py──┐
                                                          ▼  netns + mountns + pidns ("holder")
        etcd ─ kube-apiserver :6443 ─ controller-manager ─ scheduler
              │        ▲
              ▼        │ 10250 (logs/exec)
        kubelet ── containerd (CRI, runc) ── pods on cni0 10.244.0.0/24
        kube-proxy (iptables)   CoreDNS on the node address 10.250.0.1:53

Every process runs inside one set of new network, mount and PID namespaces
made by ``unshare``; the namespace's PID 1 is a reaper (``nsinit``). The node
address 10.250.0.1 lives on a veth interface in that namespace, so pod and
Service addresses never appear on the machine's own interfaces. /run, /var/log,
/var/lib/kubelet, /var/lib/cni and /etc/cni are private mounts there. Stopping
ends PID 1, which makes the kernel kill every process of the cluster (pods
included); the mount and network namespaces go with them, and the kubelet's
cgroups (all under ``/<cgroup_root>``) are removed. :func:`leftovers` lists
anything still there; the fixture asserts it is empty.

Binaries: ``make cluster-bins`` (tests/controlplane/build.sh --node), images:
tests/cluster/images.sh; both cached by version/content under
``$LLMCACHE_CACHE_DIR``. containerd's image store persists there too
(``cluster/containerd``), so a warm start imports nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

NODE_NAME = "llmcache-node"
NODE_IP = "10.250.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
#: Deadline for the whole start (etcd → Ready node); cold starts on two busy cores take ~1 min.
START_TIMEOUT_S = 300.0


def cache_dir() -> Path:
    return Path(os.environ.get("LLMCACHE_CACHE_DIR") or Path.home() / ".cache" / "llmcache")


class ClusterMissing(RuntimeError):
    """A binary or image is not built; the message names the command that builds it."""


def _read_env_file(path: Path, hint: str) -> dict[str, str]:
    if not path.is_file():
        raise ClusterMissing(f"{path} is missing: {hint}")
    entries = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            entries[key.strip()] = value.strip()
    return entries


@dataclass(frozen=True, slots=True)
class Binaries:
    """Every executable the node runs, from the version-keyed cache or Debian packages."""

    etcd: Path
    kube_apiserver: Path
    helm: Path
    kubelet: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kube_proxy: Path
    coredns: Path

    @staticmethod
    def helm_path() -> Path:
        """The helm built by ``make controlplane`` (also usable against a kind cluster)."""
        hint = "run `make controlplane`"
        return Path(_read_env_file(cache_dir() / "bin" / "controlplane.env", hint)["HELM"])

    @classmethod
    def find(cls) -> Binaries:
        hint = "run `make cluster-bins` (bash tests/controlplane/build.sh --node)"
        cp = _read_env_file(cache_dir() / "bin" / "controlplane.env", hint)
        node = _read_env_file(cache_dir() / "bin" / "node.env", hint)
        paths = {
            "etcd": cp.get("ETCD"), "kube_apiserver": cp.get("KUBE_APISERVER"), "helm": cp.get("HELM"),
            "kubelet": node.get("KUBELET"), "kube_controller_manager": node.get("KUBE_CONTROLLER_MANAGER"),
            "kube_scheduler": node.get("KUBE_SCHEDULER"), "kube_proxy": node.get("KUBE_PROXY"),
            "coredns": node.get("COREDNS"),
        }
        for name, value in paths.items():
            if not value or not os.access(value, os.X_OK):
                raise ClusterMissing(f"{name} binary {value!r} is not built: {hint}")
        for tool in ("containerd", "ctr", "runc", "unshare", "nsenter", "ip", "iptables"):
            if shutil.which(tool) is None:
                raise ClusterMissing(f"`{tool}` is not installed: run tests/cluster/install-deps.sh")
        if not Path("/usr/lib/cni/bridge").exists():
            raise ClusterMissing("CNI plugins missing (/usr/lib/cni/bridge): run tests/cluster/install-deps.sh")
        return cls(**{k: Path(v) for k, v in paths.items()})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Images:
    """References of the images built by tests/cluster/images.sh and their saved tars."""

    refs: dict[str, str]
    tars: dict[str, Path]

    @classmethod
    def find(cls) -> Images:
        entries = _read_env_file(cache_dir() / "images" / "images.env", "run `make images` (tests/cluster/images.sh)")
        refs, tars = {}, {}
        for key, value in entries.items():
            name = key.rsplit("_", 1)[0].lower().replace("_", "-")
            if key.endswith("_IMAGE"):
                refs[name] = value
            elif key.endswith("_TAR"):
                tars[name] = Path(value)
        for tar in tars.values():
            if not tar.is_file():
                raise ClusterMissing(f"image tar {tar} is missing: run `make images` (tests/cluster/images.sh)")
        return cls(refs=refs, tars=tars)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


# -- certificates ---------------------------------------------------------------


def _write_pki(directory: Path) -> None:
    """CA, API server serving cert, its kubelet-client cert, the kubelet's serving cert, SA keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def write_key(key: object, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                           serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("llmcache-test-cluster-ca")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, subject: x509.Name, *, dns: list[str] = (), ips: list[str] = (),  # type: ignore[assignment]
              client: bool = False) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                         else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   # Python >= 3.13 verifies strictly (VERIFY_X509_STRICT): both key identifiers needed.
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, directory / f"{stem}.key")

    issue("apiserver", name("kube-apiserver"),
          dns=["kubernetes", "kubernetes.default", "kubernetes.default.svc",
               f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "localhost"],
          ips=["127.0.0.1", NODE_IP, API_SERVICE_IP])
    issue("apiserver-kubelet-client", name("kube-apiserver-kubelet-client", "system:masters"), client=True)
    issue("kubelet", name(NODE_NAME), dns=[NODE_NAME, "localhost"], ips=[NODE_IP, "127.0.0.1"])
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(sa_key, directory / "sa.key")
    (directory / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def write_kubeconfig(path: Path, *, server: str, ca: Path, token: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "local",
    }))
    path.chmod(0o600)


# -- the cluster ----------------------------------------------------------------


@dataclass(slots=True)
class LocalCluster:
    """A running single-node cluster; :meth:`stop` removes every trace of it.

    ``server``/``ca``/``token``/``kubeconfig`` reach the API server from the host
    through a forwarded loopback port. ``cluster_id`` names the cgroup subtree.
    """

    workdir: Path
    binaries: Binaries
    images: Images
    cluster_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    server: str = ""
    token: str = ""
    kubeconfig: Path = Path()
    holder_pid: int = 0
    _unshare: subprocess.Popen[bytes] | None = None
    _forwarder: subprocess.Popen[bytes] | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _lock_fd: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def cgroup_root(self) -> str:
        return f"llmcache-{self.cluster_id}"

    # -- running things inside --------------------------------------------------

    def nsenter(self) -> list[str]:
        return ["nsenter", f"--target={self.holder_pid}", "--net", "--mount", "--pid", "--"]

    def run_in(self, cmd: list[str], *, timeout_s: float = 60.0,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the cluster's namespaces and wait for it."""
        proc = subprocess.run(self.nsenter() + cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}{proc.stdout[-1000:]}")
        return proc

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(self.nsenter() + cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs[name] = proc
        return proc

    def log_tail(self, name: str, num_lines: int = 30) -> str:
        try:
            lines = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-num_lines:])

    def _wait(self, what: str, check: object, *, deadline: float, names: tuple[str, ...] = ()) -> None:
        last = ""
        while time.monotonic() < deadline:
            for name in names:
                proc = self._procs.get(name)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode} while waiting for {what}:\n"
                                       f"{self.log_tail(name)}")
            try:
                if check():  # type: ignore[operator]
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last = repr(exc)
            time.sleep(0.3)
        tails = "\n".join(f"--- {n}\n{self.log_tail(n)}" for n in names)
        raise RuntimeError(f"timed out waiting for {what} ({last})\n{tails}")

    # -- start ------------------------------------------------------------------

    def _lock(self, *, timeout_s: float = 1800.0) -> None:
        """One cluster per cache dir at a time: they share containerd's image store."""
        import fcntl

        path = cache_dir() / "cluster" / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(f"another test cluster holds {path} for more than {timeout_s:.0f} s") from None
                time.sleep(1)
        self._lock_fd = fd

    def start(self) -> LocalCluster:
        self._lock()
        deadline = time.monotonic() + START_TIMEOUT_S
        t0 = time.monotonic()
        for sub in ("logs", "pki", "etcd", "kubelet", "varlog", "cni-net", "cni-state", "cfg"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        _write_pki(self.workdir / "pki")
        self.token = secrets.token_urlsafe(32)
        (self.workdir / "tokens.csv").write_text(f'{self.token},llmcache-admin,{uuid.uuid4()},"system:masters"\n')
        write_kubeconfig(self.workdir / "kubeconfig.inner", server=f"https://127.0.0.1:{API_PORT}", ca=self.ca,
                    token=self.token)
        self._start_namespaces()
        self.timings_s["namespaces"] = time.monotonic() - t0
        self._start_control_plane(deadline)
        self.timings_s["control_plane"] = time.monotonic() - t0
        self._start_runtime(deadline)
        self.timings_s["runtime"] = time.monotonic() - t0
        self._start_node(deadline)
        self.timings_s["node_ready"] = time.monotonic() - t0
        return self

    def _start_namespaces(self) -> None:
        containerd_root = cache_dir() / "cluster" / "containerd"
        containerd_root.mkdir(parents=True, exist_ok=True)
        binds = {
            str(self.workdir / "kubelet"): "/var/lib/kubelet",
            str(self.workdir / "varlog"): "/var/log",
            str(self.workdir / "cni-net"): "/etc/cni/net.d",
            str(self.workdir / "cni-state"): "/var/lib/cni",
            str(containerd_root): "/var/lib/containerd",
        }
        self._unshare = subprocess.Popen(
            # --kill-child + the death signal: a killed pytest still ends the cluster.
            ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child=SIGTERM", "--propagation", "private",
             "--mount-proc",
             sys.executable, str(HERE / "nsinit.py"),
             json.dumps({"binds": binds, "node_ip": NODE_IP, "service_cidr": SERVICE_CIDR})],
            stdout=(self.workdir / "logs" / "nsinit.log").open("wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        ready = self.workdir / "logs" / "nsinit.log"
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise RuntimeError(f"namespace setup failed:\n{ready.read_text(errors='replace')}")
            children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids and b"nsinit: ready" in ready.read_bytes():
                    self.holder_pid = int(pids[0])
                    return
            time.sleep(0.05)
        raise RuntimeError(f"namespace setup did not finish:\n{ready.read_text(errors='replace')}")

    def _start_control_plane(self, deadline: float) -> None:
        b, w = self.binaries, self.workdir
        pki = w / "pki"
        self._spawn("etcd", [str(b.etcd), "--name=node", f"--data-dir={w / 'etcd'}",
                             "--listen-client-urls=http://127.0.0.1:2379",
                             "--advertise-client-urls=http://127.0.0.1:2379",
                             "--listen-peer-urls=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level=warn"])
        self._spawn("kube-apiserver", [
            str(b.kube_apiserver), "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0", f"--advertise-address={NODE_IP}", f"--secure-port={API_PORT}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--token-auth-file={w / 'tokens.csv'}", "--authorization-mode=Node,RBAC", "--anonymous-auth=false",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            "--enable-priority-and-fairness=false", "--profiling=false", "--v=1"])
        # The loopback forwarder: the host's only door into the cluster.
        port_file = w / "forward.port"
        self._forwarder = subprocess.Popen(
            [sys.executable, str(HERE / "forward.py"), str(self.holder_pid), f"127.0.0.1:{API_PORT}", str(port_file)],
            stdout=(w / "logs" / "forward.log").open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)
        self._wait("forwarder", lambda: port_file.exists() and port_file.read_text().strip(), deadline=deadline)
        self.server = f"https://127.0.0.1:{port_file.read_text().strip()}"
        self.kubeconfig = w / "kubeconfig"
        write_kubeconfig(self.kubeconfig, server=self.server, ca=self.ca, token=self.token)
        headers = {"Authorization": f"Bearer {self.token}"}
        self._wait("kube-apiserver /readyz",
                   lambda: requests.get(f"{self.server}/readyz", headers=headers, verify=str(self.ca),
                                        timeout=5).status_code == 200,
                   deadline=deadline, names=("etcd", "kube-apiserver"))
        inner = w / "kubeconfig.inner"
        self._spawn("kube-controller-manager", [
            str(b.kube_controller_manager), f"--kubeconfig={inner}", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-node-ipam-controller", "--bind-address=127.0.0.1", "--v=1"])
        self._spawn("kube-scheduler", [str(b.kube_scheduler), f"--kubeconfig={inner}", "--leader-elect=false",
                                       "--bind-address=127.0.0.1", "--v=1"])

    def _containerd_config(self) -> Path:
        pause = self.images.refs["pause"]
        cfg = self.workdir / "cfg" / "containerd.toml"
        cfg.write_text(f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This VM refuses a negative oom_score_adj even to root.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
""")
        (self.workdir / "cni-net" / "10-llmcache.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "llmcache",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }))
        return cfg

    def ctr(self, *args: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
        return self.run_in(["ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", *args],
                           timeout_s=timeout_s)

    def _start_runtime(self, deadline: float) -> None:
        cfg = self._containerd_config()
        # Sandboxes of an earlier run are stale (their namespaces died with it).
        shutil.rmtree(cache_dir() / "cluster" / "containerd" / "io.containerd.grpc.v1.cri", ignore_errors=True)
        self._spawn("containerd", ["containerd", "--config", str(cfg), "--log-level", "warn"])
        self._wait("containerd", lambda: self.run_in(["ctr", "--address", "/run/containerd/containerd.sock",
                                                      "version"], check=False, timeout_s=10).returncode == 0,
                   deadline=deadline, names=("containerd",))
        stale = self.ctr("containers", "ls", "-q").stdout.split()
        for cid in stale:
            self.run_in(["ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io",
                         "tasks", "kill", "-s", "SIGKILL", cid], check=False)
            self.run_in(["ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io",
                         "containers", "rm", cid], check=False)
        self.load_images()

    def load_images(self) -> None:
        """Import every built image into containerd's k8s.io namespace unless it is there already."""
        t0 = time.monotonic()
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        for name, ref in sorted(self.images.refs.items()):
            if ref in present:
                continue
            logger.info("importing %s into containerd", ref)
            self.ctr("images", "import", str(self.images.tars[name]))
        self.timings_s["image_import"] = time.monotonic() - t0

    def _make_cgroup_root(self) -> None:
        """The kubelet wants its cgroupRoot to exist in every hierarchy; v1 cpuset needs cpus/mems set."""
        base = Path("/sys/fs/cgroup")
        for hierarchy in base.iterdir():
            if not hierarchy.is_dir() or not (hierarchy / "cgroup.procs").exists():
                continue
            target = hierarchy / self.cgroup_root
            target.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists():
                    (target / knob).write_text((hierarchy / knob).read_text())

    def _start_node(self, deadline: float) -> None:
        b, w = self.binaries, self.workdir
        self._make_cgroup_root()
        pki = w / "pki"
        inner = w / "kubeconfig.inner"
        (w / "cfg" / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")
        kubelet_cfg = w / "cfg" / "kubelet.yaml"
        kubelet_cfg.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # This VM mounts cgroup v1 controllers; kubelet 1.37 needs the opt-in.
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup_root}",
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "tlsCertFile": str(pki / "kubelet.crt"), "tlsPrivateKeyFile": str(pki / "kubelet.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": str(w / "cfg" / "resolv.conf"),
            "failSwapOn": False, "serializeImagePulls": False, "maxPods": 60,
            # A shared, busy development disk: never evict test pods for disk pressure.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "syncFrequency": "10s", "fileCheckFrequency": "10s",
        }))
        self._spawn("kubelet", [str(b.kubelet), f"--config={kubelet_cfg}", f"--kubeconfig={inner}",
                                "--root-dir=/var/lib/kubelet", f"--hostname-override={NODE_NAME}",
                                f"--node-ip={NODE_IP}", "--v=1"])
        proxy_cfg = w / "cfg" / "kube-proxy.yaml"
        proxy_cfg.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(inner)}, "mode": "iptables", "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_CIDR, "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # Pod -> Service -> pod on the same bridge: masquerade so replies come back through
            # the node's conntrack (no br_netfilter needed).
            "iptables": {"masqueradeAll": True},
            # Leave the machine-wide conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }))
        self._spawn("kube-proxy", [str(b.kube_proxy), f"--config={proxy_cfg}", "--v=1"])
        corefile = w / "cfg" / "Corefile"
        # Cluster zones from the API; every other name does not exist (no upstream
        # resolver is reachable from the cluster). Separate blocks: the most specific zone wins.
        corefile.write_text(f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    errors
    ready 127.0.0.1:18181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {inner} local
        pods insecure
    }}
    cache 10
    loadbalance
}}
.:53 {{
    errors
    health 127.0.0.1:18080
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
""")

        self._spawn("coredns", [str(b.coredns), "-conf", str(corefile)])
        headers = {"Authorization": f"Bearer {self.token}"}

        def node_ready() -> bool:
            r = requests.get(f"{self.server}/api/v1/nodes/{NODE_NAME}", headers=headers, verify=str(self.ca),
                             timeout=5)
            if r.status_code != 200:
                return False
            conditions = {c["type"]: c["status"] for c in r.json()["status"].get("conditions", [])}
            return conditions.get("Ready") == "True"

        self._wait("node Ready", node_ready, deadline=deadline, names=("kubelet", "containerd", "kube-proxy"))
        self._wait("default ServiceAccount",
                   lambda: requests.get(f"{self.server}/api/v1/namespaces/default/serviceaccounts/default",
                                        headers=headers, verify=str(self.ca), timeout=5).status_code == 200,
                   deadline=deadline, names=("kube-controller-manager",))
        self._wait("CoreDNS ready", lambda: self.run_in(
            [sys.executable, "-c", "import urllib.request;urllib.request.urlopen('http://127.0.0.1:18181/ready',"
             "timeout=2)"], check=False, timeout_s=10).returncode == 0, deadline=deadline, names=("coredns",))

    # -- stop -------------------------------------------------------------------

    def stop(self) -> None:
        """End every process of the cluster and remove its cgroups; idempotent."""
        if self._forwarder is not None:
            self._forwarder.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._forwarder.wait(timeout=10)
            if self._forwarder.poll() is None:
                self._forwarder.kill()
                self._forwarder.wait()
        if self.holder_pid:
            # PID 1 of the namespace exits; the kernel kills every other process in it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.holder_pid, signal.SIGTERM)
        if self._unshare is not None:
            try:
                self._unshare.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait()
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        self._procs.clear()
        self._remove_cgroups()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _cgroup_dirs(self) -> list[Path]:
        base = Path("/sys/fs/cgroup")
        candidates = [base / self.cgroup_root] + [h / self.cgroup_root for h in base.iterdir() if h.is_dir()]
        return [c for c in candidates if c.is_dir()]

    def _remove_cgroups(self, *, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for top in self._cgroup_dirs():
            while top.exists():
                dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
                for d in [*dirs, top]:
                    with contextlib.suppress(OSError):
                        d.rmdir()
                if not top.exists() or time.monotonic() > deadline:
                    break
                time.sleep(0.2)

    def leftovers(self) -> list[str]:
        """Everything of this cluster still present on the machine (empty after a clean stop)."""
        found: list[str] = []
        if self.holder_pid and Path(f"/proc/{self.holder_pid}").exists():
            found.append(f"namespace PID 1 ({self.holder_pid}) still running")
        marker = str(self.workdir)
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if marker in cmdline:
                    found.append(f"process {pid_dir.name}: {cmdline[:200]}")
        mounts = Path("/proc/self/mountinfo").read_text()
        for line in mounts.splitlines():
            if marker in line or "/var/lib/kubelet" in line or "/run/containerd" in line:
                found.append(f"mount: {line}")
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name in ("cni0", "llmnode0", "llmnode1") or name.startswith("veth"):
                found.append(f"interface on the host: {name}")
        addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False).stdout
        for net in (POD_CIDR, SERVICE_CIDR, f"{NODE_IP}/32"):
            network = ipaddress.ip_network(net)
            for line in addrs.splitlines():
                parts = line.split()
                if len(parts) > 3 and parts[2] == "inet" and ipaddress.ip_interface(parts[3]).ip in network:
                    found.append(f"address on the host: {line.strip()}")
        found += [f"cgroup: {d}" for d in self._cgroup_dirs()]
        return found


def start(workdir: Path | None = None) -> LocalCluster:
    """Start a cluster in a fresh workdir; on failure everything started is stopped again."""
    binaries = Binaries.find()
    images = Images.find()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="llmc-"))
    cluster = LocalCluster(workdir=workdir, binaries=binaries, images=images)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise

"""The webhook-certificate hook, with kube-webhook-certgen's command line.

The chart's certgen hook Jobs call ``create`` and ``patch`` exactly as they call
ingress-nginx's kube-webhook-certgen image; that image lives on registry.k8s.io
and its Go module is not on the module proxy, so the offline test cluster runs
this implementation of the same two steps instead:

  create --host=A,B --namespace=NS --secret-name=S
      Secret S exists -> nothing. Otherwise a self-signed CA and a serving
      certificate for hosts A, B, written to S under the keys ``ca``, ``cert``
      and ``key`` (the keys kube-webhook-certgen uses).
  patch --webhook-name=W --namespace=NS --secret-name=S --patch-mutating=true
        --patch-validating=false --patch-failure-policy=Ignore|Fail
      Copies S's ``ca`` into every webhook's caBundle of the
      MutatingWebhookConfiguration W and sets its failurePolicy.

It talks to the API server with the pod's ServiceAccount token (get/create on
Secrets, get/update on the webhook configuration: what the chart grants).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import ssl
import sys
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
API = "https://kubernetes.default.svc"
TIMEOUT_S = 10.0


def api(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One API request with the ServiceAccount's token; returns (status, JSON body)."""
    with open(f"{SA}/token", encoding="ascii") as f:
        token = f.read().strip()
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_certificates(hosts: list[str]) -> dict[str, bytes]:
    """A CA (10 years) and a serving certificate for ``hosts`` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmcache-webhook-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            # Strict verifiers (Python >= 3.13) want both key identifiers.
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return {"ca": pem(ca), "cert": pem(cert), "key": key_pem}


def create(args: argparse.Namespace) -> int:
    path = f"/api/v1/namespaces/{args.namespace}/secrets"
    status, _ = api("GET", f"{path}/{args.secret_name}")
    if status == 200:
        print(f"certgen: secret {args.namespace}/{args.secret_name} exists; keeping it")
        return 0
    if status != 404:
        print(f"certgen: reading secret {args.secret_name} failed with HTTP {status}", file=sys.stderr)
        return 1
    hosts = [h for h in args.host.split(",") if h]
    data = {k: base64.b64encode(v).decode() for k, v in make_certificates(hosts).items()}
    status, body = api("POST", path, {"apiVersion": "v1", "kind": "Secret",
                                      "metadata": {"name": args.secret_name}, "data": data})
    if status not in (200, 201, 409):  # 409: a concurrent run made it first
        print(f"certgen: creating secret failed with HTTP {status}: {body.get('message')}", file=sys.stderr)
        return 1
    print(f"certgen: created secret {args.namespace}/{args.secret_name} for {','.join(hosts)}")
    return 0


def patch(args: argparse.Namespace) -> int:
    status, secret = api("GET", f"/api/v1/namespaces/{args.namespace}/secrets/{args.secret_name}")
    if status != 200 or "ca" not in secret.get("data", {}):
        print(f"certgen: secret {args.secret_name} missing or without `ca` (HTTP {status})", file=sys.stderr)
        return 1
    ca_b64 = secret["data"]["ca"]
    if args.patch_mutating == "true":
        path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{args.webhook_name}"
        status, conf = api("GET", path)
        if status != 200:
            print(f"certgen: webhook configuration {args.webhook_name}: HTTP {status}", file=sys.stderr)
            return 1
        for hook in conf.get("webhooks", []):
            hook.setdefault("clientConfig", {})["caBundle"] = ca_b64
            if args.patch_failure_policy:
                hook["failurePolicy"] = args.patch_failure_policy
        status, body = api("PUT", path, conf)
        if status != 200:
            print(f"certgen: updating {args.webhook_name} failed: HTTP {status}: {body.get('message')}",
                  file=sys.stderr)
            return 1
        print(f"certgen: patched caBundle of {len(conf.get('webhooks', []))} webhook(s) in {args.webhook_name}")
    if args.patch_validating == "true":
        print("certgen: --patch-validating=true is not supported (the chart has no validating webhook)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-webhook-certgen")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create")
    c.add_argument("--host", required=True)
    c.add_argument("--namespace", required=True)
    c.add_argument("--secret-name", required=True)
    p = sub.add_parser("patch")
    p.add_argument("--webhook-name", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--secret-name", required=True)
    p.add_argument("--patch-mutating", default="true", choices=["true", "false"])
    p.add_argument("--patch-validating", default="true", choices=["true", "false"])
    p.add_argument("--patch-failure-policy", default="", choices=["", "Ignore", "Fail"])
    args = parser.parse_args(argv)
    return create(args) if args.command == "create" else patch(args)


if __name__ == "__main__":
    sys.exit(main())

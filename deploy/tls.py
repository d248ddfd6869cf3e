"""TLS for Triton's gRPC endpoint: the certificate files the server is given, and a throw-away CA.

    from deploy.tls import make_self_signed
    from deploy.server import EmbeddedServer, ServerOptions

    tls = make_self_signed(Path("build/tls"))               # CA + server cert for localhost
    with EmbeddedServer(ServerOptions(tls=tls)) as server:  # --grpc-use-ssl=true ...
        TalkingHeadClient("localhost:8001", ssl=True, root_certificates=str(tls.root_cert))

`make_self_signed` is for tests and local trials only: it calls the `openssl` command-line tool
(an argument list, no shell) to create a private CA, a server certificate for the given host
names signed by it, and a client certificate (for mutual TLS). In a deployment the files come
from the cluster's certificate issuer (e.g. cert-manager) instead; see RELIABILITY.md.

Triton 2.51 serves TLS on gRPC only: its HTTP and metrics endpoints are plain text, so a
deployment that needs TLS there terminates it in front of Triton (ingress / sidecar) or keeps
those ports off the network (--allow-http=false, metrics bound to the pod).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for Triton's gRPC TLS flags (and for a client that talks to it)."""

    server_cert: Path  # --grpc-server-cert: the server's certificate (chain)
    server_key: Path  # --grpc-server-key: its private key (keep it 0600)
    root_cert: Path  # --grpc-root-cert: the CA clients verify the server with; with mutual=True also
    #                  the CA client certificates must chain to
    mutual: bool = False  # --grpc-use-ssl-mutual: clients must present a certificate signed by root_cert
    client_cert: Path | None = None  # a client certificate (mutual TLS; the embedded server's own probe uses it)
    client_key: Path | None = None

    def server_args(self) -> list[str]:
        """tritonserver flags for these files."""
        return [
            "--grpc-use-ssl-mutual=true" if self.mutual else "--grpc-use-ssl=true",
            f"--grpc-server-cert={self.server_cert}",
            f"--grpc-server-key={self.server_key}",
            f"--grpc-root-cert={self.root_cert}",
        ]

    def client_kwargs(self) -> dict[str, object]:
        """Keyword arguments for tritonclient.grpc.InferenceServerClient / client.sdk.TalkingHeadClient."""
        kwargs: dict[str, object] = {"ssl": True, "root_certificates": str(self.root_cert)}
        if self.mutual:
            if self.client_cert is None or self.client_key is None:
                raise ValueError("mutual TLS needs client_cert and client_key for a client")
            kwargs.update(private_key=str(self.client_key), certificate_chain=str(self.client_cert))
        return kwargs

    def check(self) -> None:
        """FileNotFoundError naming the first missing file."""
        for path in (self.server_cert, self.server_key, self.root_cert):
            if not Path(path).is_file():
                raise FileNotFoundError(f"TLS file {path} does not exist")


def _openssl(*args: str | Path, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the openssl command-line tool is needed to make test certificates")
    proc = subprocess.run([exe, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _leaf(dest: Path, name: str, subject: str, extensions: str, days: int) -> None:
    """<name>.key and <name>.pem signed by ca.pem / ca.key in dest."""
    (dest / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=dest)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", str(days), "-sha256", "-extfile", f"{name}.ext", cwd=dest)
    os.chmod(dest / f"{name}.key", 0o600)


CLIENT_EXTENSIONS = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"


def make_client_cert(dest: Path, name: str, common_name: str, days: int = 2) -> tuple[Path, Path]:
    """Another client certificate signed by the CA `make_self_signed` made in dest: (<name>.pem, <name>.key). Its
    subject CN is the client's identity at the front door with mutual TLS (deploy/front_door)."""
    _leaf(Path(dest), name, f"/CN={common_name}", CLIENT_EXTENSIONS, days)
    return Path(dest) / f"{name}.pem", Path(dest) / f"{name}.key"


def make_self_signed(dest: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 2,
                     mutual: bool = False) -> TLSFiles:
    """A fresh private CA (ca.pem), a server certificate for `hosts` and a client certificate, in dest.

    EC P-256 keys (fast to make), SHA-256 signatures. Host names that parse as IPv4 addresses go in
    as IP subjectAltNames, the others as DNS names.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days), "-sha256",
             "-subj", "/CN=talking-head test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=dest)
    os.chmod(dest / "ca.key", 0o600)
    sans = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    _leaf(dest, "server", f"/CN={hosts[0]}",
          f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n", days)
    _leaf(dest, "client", "/CN=talking-head test client", CLIENT_EXTENSIONS, days)
    return TLSFiles(server_cert=dest / "server.pem", server_key=dest / "server.key", root_cert=dest / "ca.pem",
                    mutual=mutual, client_cert=dest / "client.pem", client_key=dest / "client.key")

"""Certificates for the TLS rows: a pymesh CA and X.509-SVIDs, made with the `pymesh` CLI.

`Pki(tmp, python=..., env=...)` runs `pymesh ca init` once, then `pymesh ca issue` per
service account (cached), exactly as a user would (docs/identity.md): each identity is a
directory `pymesh proxy --identity-dir` reads (`cert.pem`: leaf + intermediate, `key.pem`,
`bundle.pem`), plus `haproxy.pem` (the chain, then the key: what haproxy's `crt` wants).
Every peer of a run (haproxy and pymesh alike) uses identities of this one CA (ECDSA P-256).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TRUST_DOMAIN", "IdentityFiles", "Pki", "PkiError", "spiffe_id"]

TRUST_DOMAIN = "bench.local"
"""The trust domain of every benchmark mesh (peers.pymesh_config uses the same)."""


class PkiError(RuntimeError):
    """`pymesh ca init` or `pymesh ca issue` failed (its output is in the message)."""


def spiffe_id(service_account: str, namespace: str = "default") -> str:
    """The SPIFFE ID of a service account in the benchmark's trust domain."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    """One issued identity on disk."""

    service_account: str
    dir: Path  # for `pymesh proxy --identity-dir`

    @property
    def cert(self) -> Path:
        """The leaf, then the intermediate."""
        return self.dir / "cert.pem"

    @property
    def key(self) -> Path:
        """The private key (PKCS#8, mode 0600)."""
        return self.dir / "key.pem"

    @property
    def bundle(self) -> Path:
        """The trust bundle (the CA's root): haproxy's `ca-file`."""
        return self.dir / "bundle.pem"

    @property
    def haproxy_pem(self) -> Path:
        """The chain followed by the key, in one file (haproxy's `crt`)."""
        return self.dir.parent / f"{self.service_account}-haproxy.pem"


class Pki:
    """A CA under `tmp/ca` and identities under `tmp/id-SA`, made on first use."""

    def __init__(
        self, tmp: Path, *, python: str, env: Mapping[str, str] | None = None, ttl: str = "6h"
    ) -> None:
        self._tmp = tmp
        self._python = python
        self._env = {**os.environ, **env} if env else None
        self._ttl = ttl
        self._ca: Path | None = None
        self._issued: dict[str, IdentityFiles] = {}

    def _pymesh(self, *args: str) -> None:
        argv = [self._python, "-m", "pymesh", "ca", *args]
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=self._tmp,
                env=self._env,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PkiError(f"`pymesh ca {args[0]}` failed: {exc}") from exc
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip()[-600:]
            raise PkiError(f"`pymesh ca {' '.join(args)}` exited {done.returncode}: {said}")

    def ca_dir(self) -> Path:
        """The CA directory (`pymesh ca init --trust-domain bench.local`)."""
        if self._ca is None:
            ca = self._tmp / "ca"
            self._pymesh("init", "--dir", str(ca), "--trust-domain", TRUST_DOMAIN)
            self._ca = ca
        return self._ca

    def identity(self, service_account: str) -> IdentityFiles:
        """The identity of `service_account` (namespace default), issued on first use."""
        found = self._issued.get(service_account)
        if found is not None:
            return found
        ca = self.ca_dir()
        out = self._tmp / f"id-{service_account}"
        self._pymesh(
            "issue",
            "--dir",
            str(ca),
            "--spiffe-id",
            spiffe_id(service_account),
            "--out",
            str(out),
            "--ttl",
            self._ttl,
        )
        files = IdentityFiles(service_account, out)
        combined = files.cert.read_bytes().rstrip(b"\n") + b"\n" + files.key.read_bytes()
        fd = os.open(files.haproxy_pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(combined)
        self._issued[service_account] = files
        return files

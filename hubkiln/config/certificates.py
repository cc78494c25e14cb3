"""A launch file's TLS material, checked on the host: PEM shape, key match, expiry, name.

A teacher's own certificate (tls.certificate and tls.key, or the files they name)
is read, normalised and checked here before it goes into a seed, so that a wrong
pair fails at `invoke seed`, not at first boot. Without openssl only the PEM shape
is checked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from hubkiln.config.guest import front as guest_front
from hubkiln.config.profile import (
    KeyPath,
    display_path,
    show,
)

#: Bigger files than this are not certificates or keys.
MAX_PEM_BYTES = 64 * 1024


PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


PEM_KEY_HEADERS = ("-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----",
                   "-----BEGIN EC PRIVATE KEY-----")


def normalise_pem(text: str) -> str:
    """PEM text with Unix line ends, no surrounding blank lines, one final newline."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines()) + "\n"


def check_certificate_pem(text: str) -> str | None:
    """Why `text` does not look like a PEM certificate (chain), or None."""
    if "PRIVATE KEY-----" in text:
        return "holds a private key; give it in `key` or `key_file`, apart from the certificate"
    if PEM_CERTIFICATE not in text or "-----END CERTIFICATE-----" not in text:
        return f"is not a PEM certificate (it should start with {PEM_CERTIFICATE})"
    return None


def check_key_pem(text: str) -> str | None:
    """Why `text` does not look like an unencrypted PEM private key, or None."""
    if "ENCRYPTED" in text:
        return ("is protected by a passphrase, which the image cannot enter at boot; "
                "remove it with `openssl pkey -in KEY -out PLAIN-KEY`")
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        return "is an SSH key, not the private key of a TLS certificate"
    if not any(header in text for header in PEM_KEY_HEADERS):
        return "is not a PEM private key (it should start with -----BEGIN PRIVATE KEY-----)"
    return None


def cert_pubkey_command(openssl: str = "openssl") -> list[str]:
    """openssl command: the certificate on stdin → its public key (PEM) on stdout."""
    return [openssl, "x509", "-noout", "-pubkey"]


def key_pubkey_command(openssl: str = "openssl") -> list[str]:
    """openssl command: the private key on stdin → its public key; never prompts."""
    return [openssl, "pkey", "-pubout", "-passin", "pass:"]


def cert_expiry_command(openssl: str = "openssl") -> list[str]:
    """openssl command: print the end date; exit 1 if the certificate on stdin has expired."""
    return [openssl, "x509", "-noout", "-enddate", "-checkend", "0"]


def cert_host_command(name: str, openssl: str = "openssl") -> list[str]:
    """openssl command: say whether the certificate on stdin is valid for host `name`."""
    return [openssl, "x509", "-noout", "-checkhost", name]


def _openssl(cmd: list[str], text: str) -> subprocess.CompletedProcess:
    # The key travels on stdin, never on the command line where `ps` shows it.
    return subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30)


def check_tls_with_openssl(certificate: str, key: str, domain: str | None,
                           openssl: str) -> list[tuple[str, str]]:
    """(field, problem) pairs: key matches cert, cert not expired, valid for `domain`."""
    cert_pub = _openssl(cert_pubkey_command(openssl), certificate)
    if cert_pub.returncode != 0:
        return [("certificate", "cannot be read by openssl: "
                 + (cert_pub.stderr.strip().splitlines() or ["unknown error"])[0])]
    problems = []
    key_pub = _openssl(key_pubkey_command(openssl), key)
    if key_pub.returncode != 0:
        problems.append(("key", "cannot be read by openssl (is it complete?)"))
    elif key_pub.stdout.strip() != cert_pub.stdout.strip():
        problems.append(("key", "does not belong to the certificate (their public keys differ)"))
    expiry = _openssl(cert_expiry_command(openssl), certificate)
    if expiry.returncode != 0:
        end = expiry.stdout.strip().splitlines()[0].removeprefix("notAfter=") \
            if expiry.stdout.strip() else "an earlier date"
        problems.append(("certificate", f"has expired (valid until {end})"))
    if domain:
        host = _openssl(cert_host_command(domain, openssl), certificate)
        if "does match" not in host.stdout:
            problems.append(("certificate", f"is not valid for the domain {show(domain)}"))
    return problems


def check_acme_ca(data: dict[str, Any], openssl: str | None) -> list[tuple[KeyPath, str]]:
    """`acme_ca` and `acme_ca_root` together with `domain` (the guest's own rule), and
    the CA roots a launch may give (`acme_ca_root`, `oauth.ca_certificate`) as readable,
    unexpired PEM certificates."""
    problems: list[tuple[KeyPath, str]] = [
        ((key,), problem) for key, problem in guest_front().acme_problems(data)]
    oauth = data.get("oauth")
    roots = {("acme_ca_root",): data.get("acme_ca_root"),
             ("oauth", "ca_certificate"): oauth.get("ca_certificate")
             if isinstance(oauth, dict) else None}
    for keypath, root in roots.items():
        if isinstance(root, str):
            problems += [(keypath, problem) for problem in check_root(root, openssl)]
    return problems


def check_root(root: str, openssl: str | None) -> list[str]:
    """Why the PEM text `root` is no usable CA root certificate (empty when it is)."""
    if problem := check_certificate_pem(root):
        return [problem]
    if openssl:
        if _openssl(cert_pubkey_command(openssl), root).returncode != 0:
            return ["cannot be read by openssl"]
        if _openssl(cert_expiry_command(openssl), root).returncode != 0:
            return ["has expired"]
    return []


def resolve_tls(data: dict[str, Any], base_dir: Path, openssl: str | None
                ) -> tuple[dict[str, str] | None, list[tuple[KeyPath, str]]]:
    """Read `tls` into {certificate, key} PEM text; check it. Return (tls, problems)."""
    tls = data.get("tls")
    if not isinstance(tls, dict):
        return None, []
    problems: list[tuple[KeyPath, str]] = []
    texts: dict[str, str] = {}
    sources: dict[str, str] = {}
    for field, checker in (("certificate", check_certificate_pem), ("key", check_key_pem)):
        inline, file_key = tls.get(field), f"{field}_file"
        from_file = tls.get(file_key)
        if inline is not None and from_file is not None:
            problems.append((("tls", file_key), f"give either `{field}` or `{file_key}`, "
                             "not both"))
            continue
        if inline is None and from_file is None:
            problems.append((("tls", field), f"is missing (give `{field}` as PEM text or "
                             f"`{file_key}` as a file)"))
            continue
        if not isinstance(inline if inline is not None else from_file, str):
            continue  # the schema reports the type
        sources[field] = field if inline is not None else file_key
        if inline is not None:
            text = inline
        else:
            target = (base_dir / from_file).resolve()
            where = f"{show(from_file)}"
            if not target.is_file():
                problems.append((("tls", file_key),
                                 f"{where}: no such file ({display_path(target)})"))
                continue
            if target.stat().st_size > MAX_PEM_BYTES:
                problems.append((("tls", file_key), f"{where} is too big for a PEM file "
                                 f"({target.stat().st_size} bytes)"))
                continue
            try:
                text = target.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append((("tls", file_key), f"{where} cannot be read: {exc}"))
                continue
        if problem := checker(text):
            problems.append((("tls", sources[field]), problem))
            continue
        texts[field] = normalise_pem(text)
    if problems or len(texts) != 2:
        return None, problems
    if openssl:
        domain = data.get("domain") if isinstance(data.get("domain"), str) else None
        for field, problem in check_tls_with_openssl(texts["certificate"], texts["key"],
                                                     domain, openssl):
            problems.append((("tls", sources[field]), problem))
    return (None if problems else texts), problems


def default_openssl() -> str | None:
    """The openssl binary when installed: it enables the TLS key and certificate checks."""
    return shutil.which("openssl")

"""hubkiln_front: the HTTPS front's rules: how it gets its certificate, and its Caddyfile.

The one place of the certificate plan (`plan_front`): hubkiln-apply-launch applies
it at boot, the build's `invoke seed` summary describes it (hubkiln.config.launch),
so neither can claim a certificate the other would not get. Standard library only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

TLS_DIR = Path("/etc/hubkiln/tls")
SELF_SIGNED_CERT = TLS_DIR / "self-signed.crt"
SELF_SIGNED_KEY = TLS_DIR / "self-signed.key"
PROVIDED_CERT = TLS_DIR / "provided.crt"
PROVIDED_KEY = TLS_DIR / "provided.key"
#: The root certificate of the launch's own ACME CA (acme_ca_root), when given.
ACME_CA_ROOT = TLS_DIR / "acme-ca-root.crt"
#: Caddy's storage (ACME account key, certificates), beside the homes: on the data
#: disk when there is one, so next term's instance reuses the certificate.
CADDY_STORAGE = Path("/home/.hubkiln/caddy")
#: The ACME CA when the launch names none (acme_ca).
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
#: Where configurable-http-proxy serves the hub and the students' servers.
PROXY_PUBLIC = "127.0.0.1:8000"


def plan_front(tls_mode: str, launch: dict[str, Any],
               acme_email: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """How the front gets its certificate, from the image's `tls.mode` (and its
    `tls.acme_email`) and the launch settings: ({mode, ...}, problems). Modes: `files`
    (a certificate and key: the launch's, or the self-signed one made at first boot)
    or `acme` (the domain's certificate from `ca`, self-signed until it is issued)."""
    tls, domain = launch.get("tls"), launch.get("domain")
    problems = [f"{key}: {problem}" for key, problem in acme_problems(launch)]
    if tls_mode == "provided" and not tls:
        return {}, ["tls: this image's tls.mode is 'provided': give tls.certificate and tls.key"]
    if problems:
        return {}, problems
    if tls and tls_mode != "self-signed":
        return {"mode": "files", "certificate": PROVIDED_CERT, "key": PROVIDED_KEY}, []
    if tls_mode == "auto" and domain:
        return {"mode": "acme", "domain": domain,
                "email": launch.get("acme_email") or acme_email,
                "ca": launch.get("acme_ca") or LETS_ENCRYPT,
                "ca_root": ACME_CA_ROOT if launch.get("acme_ca_root") else None,
                "issued": False}, []
    return {"mode": "files", "certificate": SELF_SIGNED_CERT, "key": SELF_SIGNED_KEY}, []


def front_description(front: dict[str, Any]) -> str:
    """What the front serves, in words (never claims a certificate it lacks)."""
    if front["mode"] == "acme":
        ca = "Let's Encrypt" if front["ca"] == LETS_ENCRYPT else front["ca"]
        return (f"ACME ({ca}) for {front['domain']}, "
                + ("its certificate is in place" if front["issued"]
                   else "self-signed until it issues"))
    if front.get("certificate") == PROVIDED_CERT:
        return "the given certificate"
    return "self-signed"


def acme_problems(launch: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) pairs of the launch's ACME CA keys taken together: the one rule,
    used by the build (hubkiln.config.launch) and the image (hubkiln-apply-launch)."""
    problems = []
    if not launch.get("domain"):
        problems += [(key, "is used only with a `domain` (the name the CA certifies)")
                     for key in ("acme_ca", "acme_ca_root") if launch.get(key)]
    if launch.get("acme_ca_root") and not launch.get("acme_ca"):
        problems.append(("acme_ca_root", "is the root of the CA named in `acme_ca`: give "
                         "`acme_ca` too (Let's Encrypt needs no root)"))
    return problems


def acme_issuer_key(ca: str) -> str:
    """The folder Caddy (certmagic) keeps an ACME CA's certificates in, under
    CADDY_STORAGE/certificates: host and path of the directory URL, `:` and `/` as `-`
    (https://127.0.0.1:9443/acme/local/directory -> 127.0.0.1-9443-acme-local-directory)."""
    rest = ca.split("://", 1)[-1].strip("/").lower()
    return re.sub(r"[:/]", "-", rest)


def acme_certificate(domain: str, ca: str, storage: Path = CADDY_STORAGE) -> Path:
    """Where Caddy stores the certificate that `ca` issued for `domain`."""
    return storage / "certificates" / acme_issuer_key(ca) / domain / f"{domain}.crt"


def render_caddyfile(mode: str, *, domain: str | None = None, email: str | None = None,
                     ca: str | None = None, ca_root: Path | None = None,
                     issued: bool = False, certificate: Path | None = None,
                     key: Path | None = None, storage: Path = CADDY_STORAGE) -> str:
    """The HTTPS front's Caddyfile. `mode` is `files` (the `certificate` and `key`
    files, for any name) or `acme`: the domain's certificate from the ACME CA `ca`
    (Let's Encrypt when None; `ca_root` its root), and the self-signed one for every
    other name. HTTP redirects to HTTPS.

    Caddy 2.6 (checked on 2.6.2) cannot serve a managed certificate and fall back to a
    file certificate for the same name: with one TLS connection policy (the domain
    site has no TLS options of its own) the file certificate's tag selects the
    certificate for every name, the domain too, even once the ACME certificate is
    there; with a connection policy of its own (`protocols` below) the domain gets
    its ACME certificate, and without one the handshake fails (no `fallback_sni` in
    2.6). So `acme` has two shapes, chosen by `issued` (the certificate is in Caddy's
    storage and valid): before, the self-signed certificate for every name while
    Caddy obtains the ACME one in the background; after, the ACME one for the domain.
    hubkiln-front-check.timer switches between them (hubkiln-apply-launch --check-front)."""
    head = ["# Written by hubkiln-apply-launch; do not edit. Change /etc/hubkiln/launch.yaml",
            "# and run `sudo hubkiln-apply-launch` instead.", "{",
            "\t# no admin API: local users must not be able to reconfigure the front",
            "\tadmin off", "\tauto_https disable_redirects",
            # every mode: one place for Caddy's state, the only one its unit may write in /home
            f"\tstorage file_system {storage}"]
    # The hub trusts X-Real-Ip before X-Forwarded-For (tornado's xheaders): set it to
    # the client's own address, so that nobody can choose the address that fail2ban's
    # hub jail bans (Caddy already replaces X-Forwarded-For).
    proxy = [f"\treverse_proxy {PROXY_PUBLIC} {{", "\t\theader_up X-Real-Ip {remote_host}",
             "\t}"]
    headers = ["\theader {", "\t\tX-Content-Type-Options nosniff",
               "\t\tReferrer-Policy same-origin"]
    # HSTS only where the certificate is a real one: a self-signed front must stay
    # reachable once a browser has accepted its certificate.
    hsts = ['\t\tStrict-Transport-Security "max-age=31536000"']
    redirect = ["", "http:// {", "\tredir https://{host}{uri} 308", "}"]
    if mode == "acme":
        if not domain:
            raise ValueError("acme mode needs a domain")
        issuer = ["\t\tissuer acme {", f"\t\t\tdir {ca or LETS_ENCRYPT}",
                  *([f"\t\t\temail {email}"] if email else []),
                  *([f"\t\t\ttrusted_roots {ca_root}"] if ca_root else []), "\t\t}"]
        # `protocols` (Caddy's own defaults) gives the domain a connection policy of its own.
        own_policy = ["\t\tprotocols tls1.2 tls1.3"] if issued else []
        site = [f"https://{domain} {{", "\ttls {", *own_policy, *issuer, "\t}", *proxy,
                *headers, *(hsts if issued else []), "\t}", "}", "", "https:// {",
                f"\ttls {SELF_SIGNED_CERT} {SELF_SIGNED_KEY}", *proxy, *headers, "\t}", "}",
                *redirect]
    elif mode == "files":
        if not (certificate and key):
            raise ValueError("files mode needs a certificate and a key")
        real = certificate != SELF_SIGNED_CERT
        site = ["https:// {", f"\ttls {certificate} {key}", *proxy, *headers,
                *(hsts if real else []), "\t}", "}", *redirect]
    else:
        raise ValueError(f"unknown front mode {mode!r}")
    return "\n".join([*head, "}", "", *site]) + "\n"


USAGE = """usage (the build checks its front configs with them):
    python -m hubkiln_front caddyfile self-signed
    python -m hubkiln_front caddyfile acme|acme-issued DOMAIN"""


def main(argv: list[str]) -> int:
    if argv == ["caddyfile", "self-signed"]:
        print(render_caddyfile("files", certificate=SELF_SIGNED_CERT, key=SELF_SIGNED_KEY),
              end="")
    elif len(argv) == 3 and argv[:2] in (["caddyfile", "acme"], ["caddyfile", "acme-issued"]):
        print(render_caddyfile("acme", domain=argv[2], issued=argv[1] == "acme-issued"), end="")
    else:
        print(USAGE, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The in-guest logic without a guest: settings rules, launch checks, front config.

Loads provision/files/hub/hubkiln_hub.py and provision/files/bin/hubkiln-apply-launch
as modules; needs PyYAML only (no VM, no root).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubkiln.config.guest import load_module as load

FILES = Path(__file__).resolve().parents[2] / "provision" / "files"


hub = load("hubkiln_hub", FILES / "hub" / "hubkiln_hub.py")
front = load("hubkiln_front", FILES / "hub" / "hubkiln_front.py")
schema = load("hubkiln_schema", FILES / "hub" / "hubkiln_schema.py")
apply_launch = load("hubkiln_apply_launch", FILES / "bin" / "hubkiln-apply-launch")


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)


def test_dropins_merge_in_lexical_order(tmp_path):
    write(tmp_path, "00-profile.yaml", "admins: [ann]\nlimits: {memory: 2G, cpu: 1}\n"
          "users: [x]\n")
    write(tmp_path, "50-launch.yaml", "admins: [bob]\nlimits: {cpu: 2}\nusers: [alice]\n")
    write(tmp_path, "notyaml.txt", "ignored: true\n")
    settings = hub.load_settings(tmp_path)
    assert settings["admins"] == ["ann", "bob"]  # admins accumulate
    assert settings["users"] == ["alice"]  # other lists replace
    assert settings["limits"] == {"memory": "2G", "cpu": 2, "tasks": 512, "disk": "2G"}  # merge


def test_every_problem_is_reported_with_file_and_key(tmp_path):
    write(tmp_path, "00-profile.yaml", "limits: {memory: lots}\ndefault_ui: vim\n")
    write(tmp_path, "10-typo.yaml", "idle_culing: {enabled: false}\n")
    write(tmp_path, "20-broken.yaml", "users: [alice\n")
    with pytest.raises(hub.SettingsError) as error:
        hub.load_settings(tmp_path)
    text = str(error.value)
    assert "00-profile.yaml: limits.memory: 'lots' is not a size like 2G" in text
    assert "00-profile.yaml: default_ui: 'vim' is not one of: lab, notebook" in text
    assert "10-typo.yaml: idle_culing: unknown key 'idle_culing' (did you mean " \
        "'idle_culling'?)" in text
    assert "20-broken.yaml: line 2, column 1: YAML syntax error" in text


@pytest.mark.parametrize(("dropin", "expected"), [
    ("authenticator: github\n", "needs oauth.client_id, oauth.client_secret"),
    ("authenticator: github\noauth: {client_id: a, client_secret: b}\n", "needs the hub's domain"),
    ("authenticator: generic-oauth\ndomain: hub.example.org\n"
     "oauth: {client_id: a, client_secret: b}\n", "oauth.authorize_url"),
    ("users: [alice@example.org]\n", "must be Unix user names"),
])
def test_settings_that_only_fail_once_merged(tmp_path, dropin, expected):
    write(tmp_path, "50-launch.yaml", dropin)
    with pytest.raises(hub.SettingsError, match=expected):
        hub.load_settings(tmp_path)
    hub.load_settings(tmp_path, consistent=False)  # the build accepts them


def test_google_names_may_be_e_mails(tmp_path):
    write(tmp_path, "50-launch.yaml", "authenticator: google\ndomain: hub.example.org\n"
          "oauth: {client_id: a, client_secret: b}\nusers: [alice@example.org]\n")
    assert hub.load_settings(tmp_path)["users"] == ["alice@example.org"]


@pytest.mark.parametrize(("name", "expected"), [
    ("alice", "alice"),
    ("alice@example.org", None),
    ("1234-student", None),
])
def test_unix_name(name, expected):
    unix = hub.unix_name(name)
    assert hub.UNIX_NAME.fullmatch(unix)
    assert unix == (expected or unix) and unix == hub.unix_name(name)
    if expected is None:
        assert unix != name and len(unix) <= 32


def test_a_baked_dropin_refuses_oauth_secrets(tmp_path):
    baked = tmp_path / "00-profile.yaml"
    baked.write_text("oauth: {client_id: a, client_secret: b}\n")
    (problem,) = hub.dropin_problems(baked)
    assert problem.endswith("oauth: OAuth client settings are given at launch only, never baked")
    baked.write_text("authenticator: native\n")
    assert hub.dropin_problems(baked) == []
    baked.write_text("authenticator: native\nauthenticator: github\n")
    (problem,) = hub.dropin_problems(baked)
    assert "line 2: authenticator: is set twice" in problem


@pytest.mark.parametrize(("launch", "mode", "expected"), [
    ({}, "auto", "self-signed"),
    ({"domain": "hub.example.org"}, "auto", "acme"),
    ({"domain": "hub.example.org"}, "self-signed", "self-signed"),
    ({"domain": "hub.example.org", "tls": {"certificate": "c", "key": "k"}}, "auto", "provided"),
    ({"tls": {"certificate": "c", "key": "k"}}, "provided", "provided"),
])
def test_front_certificate_choice(launch, mode, expected):
    plan, problems = front.plan_front(mode, launch)
    assert not problems
    kind = "acme" if plan["mode"] == "acme" else (
        "provided" if plan["certificate"] == front.PROVIDED_CERT else "self-signed")
    assert kind == expected


def test_provided_mode_needs_a_certificate():
    assert "give tls.certificate and tls.key" in front.plan_front("provided", {})[1][0]


def test_launch_file_problems_name_the_key(tmp_path):
    launch = tmp_path / "launch.yaml"
    launch.write_text("hostname: Hub_1\ndomian: x.org\nusers: [alice, alice]\n"
                      "ssh_authorized_keys: ['not a key']\nacme_email: me\n")
    with pytest.raises(apply_launch.LaunchError) as error:
        apply_launch.read_launch(launch)
    for key in ("hostname:", "domian: unknown key 'domian' (did you mean 'domain'?)",
                "users: lists 'alice' more than once", "ssh_authorized_keys[0]:", "acme_email:"):
        assert key in str(error.value)


def test_caddyfiles():
    files = front.render_caddyfile("files", certificate=Path("/c.crt"), key=Path("/k.key"))
    assert "admin off" in files and "tls /c.crt /k.key" in files
    assert "redir https://{host}{uri} 308" in files and "reverse_proxy 127.0.0.1:8000" in files
    acme = front.render_caddyfile("acme", domain="hub.example.org", email="t@example.org")
    assert "https://hub.example.org {" in acme and "email t@example.org" in acme
    assert f"tls {front.SELF_SIGNED_CERT} {front.SELF_SIGNED_KEY}" in acme  # every other name


def test_the_front_sets_the_clients_address_and_security_headers():
    self_signed = front.render_caddyfile("files", certificate=front.SELF_SIGNED_CERT,
                                       key=front.SELF_SIGNED_KEY)
    provided = front.render_caddyfile("files", certificate=front.PROVIDED_CERT,
                                    key=front.PROVIDED_KEY)
    acme = front.render_caddyfile("acme", domain="hub.example.org")
    issued = front.render_caddyfile("acme", domain="hub.example.org", issued=True)
    for config in (self_signed, provided, acme, issued):
        # The hub reads X-Real-Ip first: the front sets it, whatever the client sent.
        assert "header_up X-Real-Ip {remote_host}" in config
        assert "X-Content-Type-Options nosniff" in config
        assert "Referrer-Policy same-origin" in config
    # HSTS only with a real certificate: not while ACME has not issued (self-signed).
    assert "Strict-Transport-Security" not in self_signed
    assert "Strict-Transport-Security" not in acme
    assert "Strict-Transport-Security" in provided and "Strict-Transport-Security" in issued


@pytest.mark.skipif(not Path("/usr/bin/caddy").exists(), reason="needs caddy (apt-get install "
                    "caddy) to check the front configs")
def test_caddy_accepts_every_front_config(tmp_path):
    import subprocess

    for name, config in {
        "self-signed": front.render_caddyfile("files", certificate=front.SELF_SIGNED_CERT,
                                            key=front.SELF_SIGNED_KEY),
        "acme": front.render_caddyfile("acme", domain="hub.example.org", email="t@example.org"),
    }.items():
        (tmp_path / name).write_text(config)
        result = subprocess.run(["/usr/bin/caddy", "adapt", "--config", str(tmp_path / name),
                                 "--adapter", "caddyfile"], capture_output=True, text=True,
                                env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, f"{name}: {result.stderr[-500:]}"


# ---- logins (hubkiln_auth): the rules, without JupyterHub

auth = load("hubkiln_auth", FILES / "hub" / "hubkiln_auth.py")


def test_secret_hashes_verify_only_their_secret():
    stored = auth.hash_secret("correct horse")
    assert auth.is_supported_hash(stored)
    assert auth.verify_secret("correct horse", stored)
    assert not auth.verify_secret("correct hors", stored)
    other_last = "1" if stored[-1] == "0" else "0"  # a digest that differs, always
    assert not auth.verify_secret("correct horse", stored[:-1] + other_last)
    for bogus in ("", "plain", "pbkdf2-sha256$1$s$" + "0" * 64, "$2b$12$short"):
        assert not auth.is_supported_hash(bogus) and not auth.verify_secret("x", bogus)
    # Every hash the module makes passes the settings' own pattern (one format, two sides).
    assert schema.pattern("secret_hash").search(stored)


def test_enrolment_codes_forgive_case_spaces_and_dashes():
    assert auth.normalise_code("k7qm 4xpa9rtw") == "K7QM-4XPA-9RTW"
    assert auth.normalise_code(" K7QM-4XPA-9RTW ") == "K7QM-4XPA-9RTW"
    assert auth.normalise_code("K7QM-4XPA-9RTX") != "K7QM-4XPA-9RTW"


def test_a_guessed_name_is_locked_after_the_failures_and_freed_later():
    now = [1000.0]
    guard = auth.LoginGuard(max_failures=3, window=60, lockout=120, clock=lambda: now[0])
    assert not guard.failed("alice") and not guard.failed("alice")
    assert guard.locked("alice") == 0
    assert guard.failed("alice")  # the third: locked now
    assert guard.locked("alice") == pytest.approx(120)
    assert guard.locked("bob") == 0  # one name's failures never lock another
    now[0] += 121
    assert guard.locked("alice") == 0
    # Failures outside the window do not add up; a success forgets them.
    guard.failed("carol")
    now[0] += 61
    assert not guard.failed("carol") and not guard.failed("carol")
    guard.succeeded("carol")
    assert not guard.failed("carol")


def test_spent_codes_are_remembered_in_a_private_file(tmp_path):
    spent = auth.SpentCodes(tmp_path / "hub" / "enrolment-spent")
    stored = auth.hash_secret("ABCD-EFGH-JKLM", iterations=1000)
    assert stored not in spent
    spent.spend(stored)
    assert stored in spent and auth.SpentCodes(spent.path).__contains__(stored)
    assert oct(spent.path.stat().st_mode & 0o777) == "0o600"
    assert oct(spent.path.parent.stat().st_mode & 0o777) == "0o700"


def test_hashes_name_only_listed_people(tmp_path):
    digest = auth.hash_secret("x", iterations=1000)
    write(tmp_path, "00-profile.yaml", "admins: [ann]\nusers: [alice]\n")
    write(tmp_path, "50-launch.yaml", f"admin_password_hashes: {{bob: '{digest}'}}\n"
          f"enrolment_code_hashes: {{alice: '{digest}', eve: '{digest}'}}\n")
    with pytest.raises(hub.SettingsError) as error:
        hub.load_settings(tmp_path)
    assert "admin_password_hashes: 'bob' not in admins" in str(error.value)
    assert "enrolment_code_hashes: 'eve' not in users" in str(error.value)
    write(tmp_path, "50-launch.yaml", "admin_password_hashes: {ann: 'plaintext'}\n")
    with pytest.raises(hub.SettingsError, match="admin_password_hashes.ann: .* is not a bcrypt"):
        hub.load_settings(tmp_path)


def test_reserved_names_are_one_rule(tmp_path):
    for name in ("root", "adm", "sudo", "ubuntu", "hubkiln-x", "systemd-y"):
        assert hub.reserved_name_problem(name), name
    assert hub.reserved_name_problem("alice") is None
    problems = apply_launch.account_problems({"admins": ["adm"], "users": ["sudo", "alice"]})
    assert any("'adm' is reserved" in p for p in problems)
    assert any("'sudo' is reserved" in p for p in problems)
    assert not any("alice" in p for p in problems)


# ---- the HTTPS front with ACME: self-signed until issued, another CA, the summary

UNI_CA = "https://acme.uni.example/acme/directory"


def acme_plan(launch, mode="auto"):
    return front.plan_front(mode, launch, "t@example.org")


def test_plan_front_names_the_ca_and_its_root():
    plan, problems = acme_plan({"domain": "hub.example.org", "acme_ca": UNI_CA,
                                "acme_ca_root": "-----BEGIN CERTIFICATE-----"})
    assert not problems
    assert plan == {"mode": "acme", "domain": "hub.example.org", "email": "t@example.org",
                    "ca": UNI_CA, "ca_root": front.ACME_CA_ROOT, "issued": False}
    plain, _ = acme_plan({"domain": "hub.example.org"})
    assert plain["ca"] == front.LETS_ENCRYPT and plain["ca_root"] is None
    # The plan survives the file --check-front reads it from.
    assert apply_launch.plan_from_json(apply_launch.plan_json(plan)) == plan


@pytest.mark.parametrize(("launch", "expected"), [
    ({"acme_ca": UNI_CA}, "acme_ca: is used only with a `domain`"),
    ({"domain": "hub.example.org", "acme_ca_root": "pem"}, "acme_ca_root: is the root of the CA"),
])
def test_plan_front_refuses_acme_keys_that_cannot_apply(launch, expected):
    plan, problems = acme_plan(launch)
    assert plan == {} and len(problems) == 1 and problems[0].startswith(expected)


def test_the_summary_never_claims_a_certificate_the_front_lacks():
    plan, _ = acme_plan({"domain": "hub.example.org"})
    assert front.front_description(plan) == (
        "ACME (Let's Encrypt) for hub.example.org, self-signed until it issues")
    uni, _ = acme_plan({"domain": "hub.example.org", "acme_ca": UNI_CA})
    assert front.front_description({**uni, "issued": True}) == (
        f"ACME ({UNI_CA}) for hub.example.org, its certificate is in place")
    self_signed, _ = acme_plan({})
    assert front.front_description(self_signed) == "self-signed"


@pytest.mark.parametrize(("launch", "key", "words"), [
    ({"acme_ca": "http://acme.uni.example/directory"}, "acme_ca", "is not an https://"),
    ({"acme_ca": "https://acme.uni.example/d?x=1"}, "acme_ca", "is not an https://"),
    ({"acme_ca_root": "no pem here"}, "acme_ca_root", "is not a PEM certificate"),
])
def test_bad_acme_launch_keys_are_named(tmp_path, launch, key, words):
    path = tmp_path / "launch.yaml"
    path.write_text(yaml_dump({"domain": "hub.example.org", **launch}))
    with pytest.raises(apply_launch.LaunchError) as error:
        apply_launch.read_launch(path)
    assert f"launch.yaml: {key}: " in str(error.value) and words in str(error.value)
    path.write_text(yaml_dump({"domain": "hub.example.org"}))
    assert apply_launch.read_launch(path) == {"domain": "hub.example.org"}


def yaml_dump(data):
    import yaml

    return yaml.safe_dump(data)


def test_the_issuer_folder_follows_the_ca_url():
    # Caddy 2.6.2 stored the local CA's certificate exactly there (checked by hand, and
    # by tests/image/test_tls_acme.py against the running front).
    assert front.acme_issuer_key("https://127.0.0.1:9443/acme/local/directory") == (
        "127.0.0.1-9443-acme-local-directory")
    assert front.acme_issuer_key(front.LETS_ENCRYPT) == "acme-v02.api.letsencrypt.org-directory"
    assert front.acme_certificate("hub.example.org", UNI_CA, Path("/s")) == Path(
        "/s/certificates/acme.uni.example-acme-directory/hub.example.org/hub.example.org.crt")


def test_the_acme_front_serves_self_signed_until_issued():
    pending = front.render_caddyfile("acme", domain="hub.example.org", ca=UNI_CA,
                                   ca_root=front.ACME_CA_ROOT)
    issued = front.render_caddyfile("acme", domain="hub.example.org", ca=UNI_CA, issued=True)
    for config in (pending, issued):
        assert f"storage file_system {front.CADDY_STORAGE}" in config
        assert f"dir {UNI_CA}" in config
        assert f"tls {front.SELF_SIGNED_CERT} {front.SELF_SIGNED_KEY}" in config  # other names
        assert "redir https://{host}{uri} 308" in config
    assert f"trusted_roots {front.ACME_CA_ROOT}" in pending and "trusted_roots" not in issued
    # Only the issued shape gives the domain a TLS connection policy of its own.
    assert "protocols" not in pending and "protocols tls1.2 tls1.3" in issued
    assert f"dir {front.LETS_ENCRYPT}" in front.render_caddyfile("acme", domain="hub.example.org")


@pytest.mark.skipif(not Path("/usr/bin/caddy").exists(), reason="needs caddy (apt-get install "
                    "caddy) to check the front configs")
def test_caddy_gives_the_domain_its_own_policy_only_once_issued(tmp_path):
    """What Caddy 2.6 makes of the two shapes: one policy whose tag picks the self-signed
    certificate for every name (pending), or the domain's own SNI policy first (issued)."""
    import json
    import subprocess

    def adapted(config: str) -> dict:
        (tmp_path / "Caddyfile").write_text(config)
        result = subprocess.run(["/usr/bin/caddy", "adapt", "--config",
                                 str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                                capture_output=True, text=True,
                                env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr[-500:]
        return json.loads(result.stdout)

    def policies(config: str) -> list:
        return adapted(config)["apps"]["http"]["servers"]["srv0"]["tls_connection_policies"]

    pending = policies(front.render_caddyfile("acme", domain="hub.example.org", ca=UNI_CA,
                                            email="t@example.org"))
    assert len(pending) == 1 and "match" not in pending[0]
    assert pending[0]["certificate_selection"]["any_tag"]
    issued = policies(front.render_caddyfile("acme", domain="hub.example.org", ca=UNI_CA,
                                           issued=True))
    assert issued[0]["match"] == {"sni": ["hub.example.org"]}
    assert "certificate_selection" not in issued[0] and issued[1]["certificate_selection"]
    tls = adapted(front.render_caddyfile("acme", domain="hub.example.org", ca=UNI_CA))["apps"]
    assert tls["tls"]["automation"]["policies"][0]["issuers"] == [
        {"ca": UNI_CA, "module": "acme"}]


def test_the_acme_report_says_what_to_check():
    plan, _ = acme_plan({"domain": "hub.example.org", "acme_ca": UNI_CA})
    failed = "could not get certificate from issuer"  # Caddy 2.6.2's words, as logged
    lines = ["not json", json.dumps({"level": "info", "logger": "tls.obtain",
                                     "identifier": "hub.example.org", "msg": "obtaining"}),
             json.dumps({"level": "error", "logger": "tls.obtain", "identifier": "other.org",
                         "msg": failed, "error": "not ours"}),
             json.dumps({"level": "error", "logger": "tls.obtain",
                         "identifier": "hub.example.org", "msg": failed,
                         "error": "dial tcp: refused"}),
             json.dumps({"level": "error", "logger": "tls.obtain",
                         "identifier": "hub.example.org", "msg": "unable to unlock",
                         "error": "remove .../issue_cert_hub.example.org.lock"})]
    error = apply_launch.last_acme_error(lines, "hub.example.org")
    assert error == "dial tcp: refused"
    assert apply_launch.last_acme_error(lines[:3], "hub.example.org") is None
    report = apply_launch.acme_report(plan, error)
    for words in ("no ACME certificate for hub.example.org", "self-signed certificate for "
                  "every name", "dial tcp: refused", "DNS record of hub.example.org",
                  "TCP 80 and 443", UNI_CA, "rate limits", str(front.CADDY_STORAGE),
                  "journalctl -u hubkiln-front.service"):
        assert words in report


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="needs openssl")
def test_an_issued_certificate_counts_only_when_valid_for_the_domain(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(apply_launch, "CADDY_STORAGE", tmp_path)
    where = front.acme_certificate("hub.example.org", UNI_CA, tmp_path)

    def store(name: str, days: int) -> None:
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", tmp_path / "k",
                        "-out", where, "-days", str(days), "-subj", f"/CN={name}", "-addext",
                        f"subjectAltName=DNS:{name}"], check=True, capture_output=True)

    assert not apply_launch.acme_certificate_ready("hub.example.org", UNI_CA)  # none yet
    store("hub.example.org", 30)
    assert apply_launch.acme_certificate_ready("hub.example.org", UNI_CA)
    plan, _ = acme_plan({"domain": "hub.example.org", "acme_ca": UNI_CA})
    assert apply_launch.with_certificate_facts(plan)["issued"] is True
    assert not apply_launch.acme_certificate_ready("hub.example.org", front.LETS_ENCRYPT)
    store("other.example.org", 30)
    assert not apply_launch.acme_certificate_ready("hub.example.org", UNI_CA)
    store("hub.example.org", 1)  # a day left: enough for an hour's margin, not for two days
    assert apply_launch.acme_certificate_ready("hub.example.org", UNI_CA)
    monkeypatch.setattr(apply_launch, "ACME_MARGIN_SECONDS", 2 * 86400)
    assert not apply_launch.acme_certificate_ready("hub.example.org", UNI_CA)


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="needs openssl")
def test_check_front_switches_once_the_certificate_is_there(tmp_path, monkeypatch, capsys):
    import subprocess

    calls = []

    def fake_run(argv, **kwargs):
        if argv[0] == "openssl":
            return real_run(argv, **kwargs)
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=json.dumps({
            "level": "error", "logger": "tls.obtain", "identifier": "hub.example.org",
            "msg": "could not get certificate from issuer", "error": "no such host"}) + "\n")

    real_run = subprocess.run
    for name, value in (("FRONT_PLAN", tmp_path / "plan.json"),
                        ("FRONT_CONFIG", tmp_path / "Caddyfile"), ("CADDY_STORAGE", tmp_path)):
        monkeypatch.setattr(apply_launch, name, value)
    monkeypatch.setattr(apply_launch.subprocess, "run", fake_run)
    monkeypatch.setattr(apply_launch.os, "chown", lambda *args: None)
    plan, _ = acme_plan({"domain": "hub.example.org", "acme_ca": UNI_CA})
    (tmp_path / "plan.json").write_text(apply_launch.plan_json(plan))
    (tmp_path / "Caddyfile").write_text(front.render_caddyfile(**plan))

    assert apply_launch.check_front() == 0  # no certificate: reported, nothing restarted
    assert not any("try-restart" in call for call in calls)
    report = capsys.readouterr().err
    assert "no ACME certificate for hub.example.org yet" in report and "no such host" in report

    where = front.acme_certificate("hub.example.org", UNI_CA, tmp_path)
    where.parent.mkdir(parents=True)
    real_run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", tmp_path / "k", "-out", where,
              "-days", "30", "-subj", "/CN=hub.example.org", "-addext",
              "subjectAltName=DNS:hub.example.org"], check=True, capture_output=True)
    calls.clear()
    assert apply_launch.check_front() == 0  # issued: the domain's own policy, one restart
    assert calls == [["systemctl", "try-restart", "hubkiln-front.service"]]
    assert "protocols tls1.2 tls1.3" in (tmp_path / "Caddyfile").read_text()
    assert "its certificate is in place" in capsys.readouterr().out
    calls.clear()
    assert apply_launch.check_front() == 0 and calls == []  # nothing changed: no restart

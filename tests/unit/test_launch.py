"""Launch settings: good files load and normalise, bad ones name file and key, and the
user-data has exactly the structure the image expects. No VM is booted here."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import os
import shutil
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

from hubkiln.config import guest
from hubkiln.config.launch import (
    Launch,
    LaunchError,
    check_launch_data,
    check_launch_for_profile,
    check_ssh_public_key,
    demo_launch,
    launch_keys,
    load_launch,
)
from hubkiln.config.profile import load_profile
from hubkiln.deliver.local import (
    find_built_image,
    local_launch,
    login_instructions,
    login_page_answers,
    ssh_instructions,
)
from hubkiln.deliver.seed import (
    GUEST_LAUNCH_FILE,
    Credentials,
    issue_credentials,
    render_meta_data,
    render_user_data,
    user_data_notes,
    write_seed,
)
from hubkiln.docs import LAUNCH_DOC, splice_launch_doc
from hubkiln.errors import BuildError

PROJECT = Path(__file__).resolve().parents[2]
EXAMPLE = PROJECT / "examples" / "launch.yaml"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None,
                                   reason="xorriso is not installed")

ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxyr2P28/gcSKVzoD4TLPhorQ7JTthbfAC0bGjVYhmh "
           "teacher@laptop")


def ssh_field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def key_line(kind: str, *fields: bytes, comment: str = "me@host") -> str:
    """An OpenSSH public key line with the given wire-format fields after the type."""
    blob = ssh_field(kind.encode()) + b"".join(ssh_field(f) for f in fields)
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


def rsa_line(bits: int) -> str:
    modulus = (1 << (bits - 1)) | 1
    return key_line("ssh-rsa", (65537).to_bytes(3, "big"),
                    b"\0" + modulus.to_bytes(bits // 8, "big"))


def write(tmp_path: Path, text: str, name: str = "launch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, **kwargs) -> list[str]:
    with pytest.raises(LaunchError) as info:
        load_launch(path, **kwargs)
    return info.value.problems


def the_problem(path: Path, **kwargs) -> str:
    (problem,) = problems_of(path, **kwargs)
    return problem


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path, so messages show paths relative to it (`launch.yaml: ...`)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- good files -------------------------------------------------------------------------


def test_the_example_is_valid_and_complete():
    launch = load_launch(EXAMPLE)
    assert list(launch.data) == launch_keys()
    assert launch["hostname"] == "optim-hub" and launch["domain"] == "hub.example.org"
    assert launch["admins"] == ["teacher"] and launch["users"] == ["alice", "bob", "carol"]
    assert launch["ssh_authorized_keys"] == [ED25519]
    assert launch["oauth"] is None and launch["tls"] is None


def test_missing_keys_get_their_defaults(in_tmp):
    launch = load_launch(write(in_tmp, "users: [alice]\n"))
    assert launch.data == {"hostname": "hubkiln", "domain": None, "acme_email": None,
                           "acme_ca": None, "acme_ca_root": None, "admins": [],
                           "users": ["alice"], "admin_password_hashes": {},
                           "enrolment_codes": True, "enrolment_code_hashes": {},
                           "ssh_authorized_keys": [], "oauth": None, "tls": None,
                           "class_schedule": None}


@pytest.mark.parametrize("name", ["a", "s1234567", "j-doe", "x_y", "a" * 32, "on"])
def test_plain_user_names_are_accepted(in_tmp, name):
    assert load_launch(write(in_tmp, f"users: ['{name}']\n"))["users"] == [name]


@pytest.mark.parametrize("line", [
    ED25519,
    key_line("ecdsa-sha2-nistp256", b"nistp256", b"\x04" + b"\1" * 64),
    rsa_line(2048),
    key_line("sk-ssh-ed25519@openssh.com", b"\1" * 32, b"ssh:"),
    key_line("sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", b"\x04" + b"\1" * 64, b"ssh:"),
    key_line("ssh-ed25519", b"\1" * 32, comment="comment with spaces"),
])
def test_ssh_key_types_are_accepted(in_tmp, line):
    path = write(in_tmp, f"admins: [teacher]\nssh_authorized_keys: ['{line}']\n")
    assert load_launch(path)["ssh_authorized_keys"] == [line]


def test_demo_settings_name_a_teacher_and_two_students():
    demo = demo_launch()
    assert demo["admins"] == ["teacher"] and demo["users"] == ["student1", "student2"]
    assert demo.source is None and "demo" in demo.where


# --- bad files name the file and the key ------------------------------------------------------


def test_unknown_key_suggests_the_closest(in_tmp):
    path = write(in_tmp, """\
        userz: [alice]
        admins: [teacher]
        oauth: {client_id: a, client_secret: b, client_secrte: c}
        """)
    problems = problems_of(path)
    assert "launch.yaml: userz: unknown key 'userz' (did you mean 'users'?)" in problems
    assert ("launch.yaml: oauth.client_secrte: unknown key 'client_secrte' "
            "(did you mean 'client_secret'?)") in problems


def test_all_problems_are_reported_at_once(in_tmp):
    path = write(in_tmp, """\
        hostname: -bad
        domain: localhost
        acme_email: nope
        admins: [Alice]
        users: [bob, bob]
        """)
    problems = problems_of(path)
    assert [p.split(":")[1].strip() for p in problems] == [
        "acme_email", "admins[0]", "domain", "hostname", "users"]
    assert all(p.startswith("launch.yaml: ") for p in problems)


@pytest.mark.parametrize("name", ["Alice", "../x", "a b", "-x", "", "x/y", "bob\n", "a" * 101,
                                  ".x", "a:b", "é"])
def test_absurd_user_names_are_refused(in_tmp, name):
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"admins": ["teacher"], "users": [name]}))
    problem = the_problem(path)
    assert problem.startswith("launch.yaml: users[0]: ")
    assert "is not a user name" in problem


@pytest.mark.parametrize("name", ["a" * 33, "1abc", "a.b", "ada@uni.example.org", "x+y"])
def test_login_provider_names_need_a_login_provider(in_tmp, name):
    """A login provider's names (e-mails, GitHub names with digits first) are fine in a
    launch file; an image with a password login refuses them (they are not Unix names)."""
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"admins": ["teacher"], "users": [name],
                                    "domain": "hub.example.org",
                                    "oauth": {"client_id": "i", "client_secret": "s"}}))
    launch = load_launch(path)
    ci = load_profile("ci")
    assert check_launch_for_profile(launch, with_hub(ci, hub={"authenticator": "github"})) == []
    (problem,) = check_launch_for_profile(
        Launch(data={**launch.data, "oauth": None, "domain": None}, source=path), ci)
    assert problem.startswith("launch.yaml: users: ")
    assert "with the 'firstuse' login, names must be Unix user names" in problem


@pytest.mark.parametrize("name", ["root", "admin", "sudo", "adm", "ubuntu", "nobody",
                                  "systemd-network", "hubkiln-build", "jupyterhub"])
@pytest.mark.parametrize("key", ["admins", "users"])
def test_system_names_are_refused(in_tmp, name, key):
    other = "users: [alice]" if key == "admins" else "admins: [teacher]"
    problem = the_problem(write(in_tmp, f"{key}: [{name}]\n{other}\n"))
    assert problem == f"launch.yaml: {key}[0]: '{name}' is reserved for the system; " \
                      "choose another name"


def test_duplicate_names_are_refused(in_tmp):
    problem = the_problem(write(in_tmp, "users: [alice, bob, alice]\n"))
    assert problem == "launch.yaml: users: lists 'alice' more than once"


def test_a_name_cannot_be_admin_and_student(in_tmp):
    problem = the_problem(write(in_tmp, "admins: [teacher]\nusers: [alice, teacher]\n"))
    assert problem.startswith("launch.yaml: users[1]: 'teacher' is also in admins")


def test_yaml_booleans_get_a_quoting_hint(in_tmp):
    problem = the_problem(write(in_tmp, "users: [alice, no]\n"))
    assert problem.startswith("launch.yaml: users[1]: false is a boolean, expected a string")
    assert "in quotes" in problem


def test_a_launch_without_names_is_refused(in_tmp):
    problem = the_problem(write(in_tmp, "hostname: lab\n"))
    assert problem.startswith("launch.yaml: users: nobody can log in")


def test_ssh_keys_without_admins_are_refused(in_tmp):
    problem = the_problem(write(in_tmp, f"users: [alice]\nssh_authorized_keys: ['{ED25519}']\n"))
    assert problem.startswith("launch.yaml: ssh_authorized_keys: no admin can use these keys")


@pytest.mark.parametrize(("line", "words"), [
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP me", "is a DSA key"),
    ("ssh-ed25519", "is not one OpenSSH public key line"),
    ("AAAAC3NzaC1lZDI1NTE5AAAAIDxyr2P28 me", "is not one OpenSSH public key line"),
    ("ssh-ed25519 AAAA$$$ me", "is not one OpenSSH public key line"),
    (ED25519[:60] + " me", "was the line cut off?"),
    ("ssh-rsa " + ED25519.split()[1], "says ssh-rsa but holds a ssh-ed25519 key"),
    (rsa_line(1024), "is a 1024-bit RSA key"),
    (key_line("ssh-ed25519", b"\1" * 31), "wrong length"),
    (key_line("ssh-ed25519", b"\1" * 32, b"extra"), "extra bytes"),
    (ED25519 + "\n" + ED25519, "is not one OpenSSH public key line"),
])
def test_bad_ssh_keys_are_refused(in_tmp, line, words):
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"admins": ["teacher"], "ssh_authorized_keys": [line]}))
    problem = the_problem(path)
    assert problem.startswith("launch.yaml: ssh_authorized_keys[0]: ") and words in problem


def test_a_pasted_private_key_is_refused_without_echoing_it(in_tmp):
    secret = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"
    private = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n-----END OPENSSH PRIVATE KEY-----\n"
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"admins": ["t"], "ssh_authorized_keys": [private]}))
    problem = the_problem(path)
    assert "ssh_authorized_keys[0]: is a private key" in problem and secret not in problem


def test_check_ssh_public_key_accepts_a_real_key():
    assert check_ssh_public_key(ED25519) is None


def test_oauth_secrets_are_never_echoed(in_tmp):
    path = write(in_tmp, """\
        users: [alice]
        domain: hub.example.org
        oauth: {client_id: abc, client_secret: 8675309}
        """)
    problem = the_problem(path)
    assert problem.startswith("launch.yaml: oauth.client_secret: (value hidden) is a whole number")
    assert "8675309" not in problem


def test_oauth_needs_id_and_secret(in_tmp):
    path = write(in_tmp, "users: [a]\ndomain: hub.example.org\noauth: {client_secret: x}\n")
    assert the_problem(path) == "launch.yaml: oauth.client_id: is missing (oauth needs client_id)"
    path = write(in_tmp, "users: [a]\ndomain: hub.example.org\noauth: {client_id: abc}\n")
    assert the_problem(path).startswith("launch.yaml: oauth.client_secret: is missing")


def test_oauth_needs_a_domain(in_tmp):
    problem = the_problem(write(in_tmp, "users: [a]\noauth: {client_id: a, client_secret: b}\n"))
    assert problem.startswith("launch.yaml: domain: is needed with `oauth`")


def test_an_lti_tool_needs_its_keys_and_no_secret(in_tmp):
    path = write(in_tmp, """\
        users: [alice]
        domain: hub.example.org
        oauth:
          client_id: abc
          issuer: https://lms.example.org
          authorize_url: https://lms.example.org/auth
          jwks_endpoint: https://lms.example.org/jwks
        """)
    assert load_launch(path)["oauth"]["issuer"] == "https://lms.example.org"
    path.write_text(path.read_text().replace("  jwks_endpoint", "  # jwks_endpoint"))
    assert the_problem(path).startswith("launch.yaml: oauth.jwks_endpoint: is missing (an LTI")


def test_generic_oidc_needs_its_three_urls(in_tmp):
    path = write(in_tmp, """\
        users: [alice]
        domain: hub.example.org
        oauth:
          client_id: abc
          client_secret: xyz
          scope: [openid, email]
          authorize_url: https://id.example.org/authorize
          token_url: http://id.example.org/token
        """)
    problems = problems_of(path)
    assert problems == [
        "launch.yaml: oauth.token_url: (value hidden) is not an https:// URL",
        "launch.yaml: oauth.userdata_url: is missing (a generic OIDC provider needs "
        "authorize_url, token_url, userdata_url)",
    ]


def test_username_claim_needs_the_oidc_urls(in_tmp):
    path = write(in_tmp, "users: [a]\ndomain: hub.example.org\n"
                 "oauth: {client_id: a, client_secret: b, username_claim: c}\n")
    assert "oauth.username_claim: is used only with a generic OIDC" in the_problem(path)


def test_empty_file_is_refused(in_tmp):
    assert the_problem(write(in_tmp, "# nothing yet\n")) == \
        "launch.yaml: the file is empty; a launch file needs at least `admins` or `users`"


def test_missing_file_is_refused(in_tmp):
    assert the_problem(in_tmp / "nope.yaml") == "nope.yaml: no such launch file"


def test_yaml_syntax_error_names_the_line(in_tmp):
    problem = the_problem(write(in_tmp, "admins: [teacher]\nusers: [alice\n"))
    assert problem.startswith("launch.yaml: line 3, column 1: YAML syntax error")


def test_top_level_must_be_a_mapping(in_tmp):
    assert the_problem(write(in_tmp, "- alice\n")) == \
        "launch.yaml: (top level): a list, expected a mapping of keys"


def test_a_key_set_twice_is_refused(in_tmp):
    problem = the_problem(write(in_tmp, "users: [alice]\nadmins: [t]\nusers: [bob]\n"))
    assert problem == ("launch.yaml: line 3: users: is set twice (lines 1 and 3); only the last "
                       "would count, so merge them")


# --- TLS --------------------------------------------------------------------------------------

FAKE_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def test_tls_file_missing_is_named(in_tmp):
    (in_tmp / "hub.key").write_text(FAKE_KEY)
    path = write(in_tmp, "users: [a]\ntls: {certificate_file: hub.crt, key_file: hub.key}\n")
    assert the_problem(path, openssl=None) == \
        "launch.yaml: tls.certificate_file: 'hub.crt': no such file (hub.crt)"


def test_tls_files_are_read_relative_to_the_launch_file(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "hub.crt").write_text("\n" + FAKE_CERT.replace("\n", "\r\n"))
    (tmp_path / "certs" / "hub.key").write_text(FAKE_KEY)
    path = write(tmp_path, "users: [a]\ntls: {certificate_file: certs/hub.crt, "
                 "key_file: certs/hub.key}\n")
    assert load_launch(path, openssl=None)["tls"] == {"certificate": FAKE_CERT, "key": FAKE_KEY}


@pytest.mark.parametrize(("tls", "problem"), [
    ({"certificate": FAKE_CERT}, "tls.key: is missing (give `key` as PEM text or `key_file`"),
    ({"certificate": FAKE_CERT, "certificate_file": "x", "key": FAKE_KEY},
     "tls.certificate_file: give either `certificate` or `certificate_file`, not both"),
    ({"certificate": "hello", "key": FAKE_KEY}, "tls.certificate: is not a PEM certificate"),
    ({"certificate": FAKE_CERT + FAKE_KEY, "key": FAKE_KEY},
     "tls.certificate: holds a private key"),
    ({"certificate": FAKE_CERT, "key": FAKE_KEY.replace("PRIVATE", "ENCRYPTED PRIVATE")},
     "tls.key: is protected by a passphrase"),
    ({"certificate": FAKE_CERT, "key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"},
     "tls.key: is an SSH key"),
    ({"certificate": FAKE_CERT, "key": 42}, "tls.key: (value hidden) is a whole number"),
])
def test_bad_tls_settings_are_named(in_tmp, tls, problem):
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"users": ["a"], "tls": tls}))
    found = the_problem(path, openssl=None)
    assert found.startswith(f"launch.yaml: {problem}")
    assert "MIIE" not in found


def make_cert(folder: Path, name: str, host: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "30", "-subj", f"/CN={host}", "-addext",
                    f"subjectAltName=DNS:{host}"], check=True, capture_output=True)
    return cert, key


def make_expired_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate valid for one day in 2020 (`openssl ca` sets the dates)."""
    (folder / "index.txt").write_text("")
    (folder / "serial").write_text("01\n")
    (folder / "ca.cnf").write_text(textwrap.dedent("""\
        [ca]
        default_ca = d
        [d]
        database = index.txt
        new_certs_dir = .
        serial = serial
        default_md = sha256
        policy = p
        unique_subject = no
        [p]
        commonName = supplied
        """))
    subprocess.run([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "old.key", "-out",
                    "old.csr", "-subj", "/CN=old.example.org"], cwd=folder, check=True,
                   capture_output=True)
    subprocess.run([OPENSSL, "ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile",
                    "old.key", "-in", "old.csr", "-out", "old.crt", "-notext", "-startdate",
                    "20200101000000Z", "-enddate", "20200102000000Z"], cwd=folder, check=True,
                   capture_output=True)
    return folder / "old.crt", folder / "old.key"


@needs_openssl
def test_a_matching_certificate_and_key_load(in_tmp):
    make_cert(in_tmp, "hub", "hub.example.org")
    path = write(in_tmp, "users: [a]\ndomain: hub.example.org\n"
                 "tls: {certificate_file: hub.crt, key_file: hub.key}\n")
    tls = load_launch(path)["tls"]
    assert tls["certificate"] == (in_tmp / "hub.crt").read_text()
    assert tls["key"].startswith("-----BEGIN PRIVATE KEY-----")


@needs_openssl
def test_a_key_of_another_certificate_is_refused(in_tmp):
    make_cert(in_tmp, "hub", "hub.example.org")
    make_cert(in_tmp, "other", "hub.example.org")
    path = write(in_tmp, "users: [a]\ntls: {certificate_file: hub.crt, key_file: other.key}\n")
    assert the_problem(path) == ("launch.yaml: tls.key_file: does not belong to the "
                                 "certificate (their public keys differ)")


@needs_openssl
def test_a_certificate_for_another_name_is_refused(in_tmp):
    make_cert(in_tmp, "hub", "other.example.org")
    path = write(in_tmp, "users: [a]\ndomain: hub.example.org\n"
                 "tls: {certificate_file: hub.crt, key_file: hub.key}\n")
    assert the_problem(path) == ("launch.yaml: tls.certificate_file: is not valid for the "
                                 "domain 'hub.example.org'")


@needs_openssl
def test_an_expired_certificate_is_refused(in_tmp):
    make_expired_cert(in_tmp)
    path = write(in_tmp, "users: [a]\ntls: {certificate_file: old.crt, key_file: old.key}\n")
    assert the_problem(path) == ("launch.yaml: tls.certificate_file: has expired (valid until "
                                 "Jan  2 00:00:00 2020 GMT)")


@needs_openssl
def test_a_certificate_openssl_cannot_read_is_refused(in_tmp):
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"users": ["a"], "tls": {"certificate": FAKE_CERT,
                                                            "key": FAKE_KEY}}))
    assert the_problem(path).startswith("launch.yaml: tls.certificate: cannot be read by openssl")


# --- the user-data ------------------------------------------------------------------------------


def test_user_data_has_exactly_the_expected_structure():
    launch = load_launch(EXAMPLE)
    text = render_user_data(launch)
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    assert list(config) == ["hostname", "fqdn", "locale", "ssh_pwauth", "users", "write_files"]
    assert config["hostname"] == "optim-hub" and config["fqdn"] == "hub.example.org"
    assert config["locale"] == "C.UTF-8"
    assert config["ssh_pwauth"] is False
    assert config["users"] == []
    (entry,) = config["write_files"]
    assert entry.keys() == {"path", "owner", "permissions", "content"}
    assert entry["path"] == GUEST_LAUNCH_FILE == "/etc/hubkiln/launch.yaml"
    assert entry["owner"] == "root:root"
    assert entry["permissions"] == "0600"  # a string: an unquoted 0600 would be octal 384
    assert yaml.safe_load(entry["content"]) == launch.data


def test_user_data_without_a_domain_has_no_fqdn(in_tmp):
    config = yaml.safe_load(render_user_data(load_launch(write(in_tmp, "users: [a]\n"))))
    assert "fqdn" not in config and config["hostname"] == "hubkiln"


def test_the_document_in_the_user_data_is_itself_a_valid_launch_file(tmp_path):
    (tmp_path / "hub.crt").write_text(FAKE_CERT)
    (tmp_path / "hub.key").write_text(FAKE_KEY)
    spaced = "ssh-ed25519   " + ED25519.split()[1] + "  t@l  "
    path = write(tmp_path, f"""\
        admins: [teacher]
        users: [alice]
        domain: hub.example.org
        ssh_authorized_keys: ['{spaced}']
        oauth: {{client_id: a, client_secret: "s3cr:et"}}
        tls: {{certificate_file: hub.crt, key_file: hub.key}}
        """)
    launch = load_launch(path, openssl=None)
    (entry,) = yaml.safe_load(render_user_data(launch))["write_files"]
    assert "certificate: |\n" in entry["content"]  # PEM as a readable literal block
    document = yaml.safe_load(entry["content"])
    again, problems = check_launch_data(document, base_dir=tmp_path, openssl=None)
    assert problems == [] and again == document == launch.data
    assert document["ssh_authorized_keys"] == [ED25519.replace("teacher@laptop", "t@l")]
    assert document["tls"] == {"certificate": FAKE_CERT, "key": FAKE_KEY}


def test_meta_data_gets_a_fresh_instance_id_and_the_host_name():
    launch = load_launch(EXAMPLE)
    first, second = (yaml.safe_load(render_meta_data(launch)) for _ in range(2))
    assert first["local-hostname"] == "optim-hub"
    assert first["instance-id"] != second["instance-id"]


def test_big_user_data_gets_a_size_note():
    roster = [f"student{i:05d}" for i in range(1500)]
    launch = Launch(data={**demo_launch().data, "users": roster})
    (note,) = user_data_notes(render_user_data(launch))
    assert "AWS" in note and "gzip" in note
    assert user_data_notes(render_user_data(demo_launch())) == []


def test_docs_are_in_sync_with_the_schema_and_the_example():
    doc = LAUNCH_DOC.read_text(encoding="utf-8")
    assert splice_launch_doc(doc) == doc, (
        "docs/launch.md is stale: run .venv/bin/python -c "
        "'from hubkiln.actions import update_launch_docs; update_launch_docs()'")


# --- profiles and the local launch ---------------------------------------------------------------


def with_hub(profile, **changes):
    data = {**profile.data, "hub": {**profile["hub"], **changes.pop("hub", {})},
            "tls": {**profile["tls"], **changes.pop("tls", {})}}
    return dataclasses.replace(profile, data=data)


def test_profiles_that_need_oauth_or_tls_say_so():
    ci = load_profile("ci")
    demo = demo_launch()
    assert check_launch_for_profile(demo, ci) == []
    (problem,) = check_launch_for_profile(demo, with_hub(ci, hub={"authenticator": "github"}))
    assert problem == ("(built-in demo settings): oauth: the profile 'ci' logs in with github, "
                       "which needs oauth.client_id, oauth.client_secret")
    (problem,) = check_launch_for_profile(demo, with_hub(ci, tls={"mode": "provided"}))
    assert "tls.mode `provided`, which needs `tls`" in problem
    github = Launch(data={**demo.data, "oauth": {"client_id": "a", "client_secret": "b"}})
    assert check_launch_for_profile(github, with_hub(ci, hub={"authenticator": "github"})) == []
    (problem,) = check_launch_for_profile(github, with_hub(ci, hub={"authenticator":
                                                                    "generic-oauth"}))
    assert problem.endswith("needs oauth.authorize_url, oauth.token_url, oauth.userdata_url")
    (problem,) = check_launch_for_profile(github, with_hub(ci, hub={"authenticator": "lti13"}))
    assert problem.endswith("needs oauth.authorize_url, oauth.issuer, oauth.jwks_endpoint")


def test_upper_case_host_and_domain_names_are_refused(in_tmp):
    problems = problems_of(write(in_tmp, "users: [a]\nhostname: Lab\ndomain: Hub.example.org\n"))
    assert [p.split(":")[1].strip() for p in problems] == ["domain", "hostname"]
    assert "lower case" in problems[0] and "lower-case" in problems[1]


def test_a_local_launch_refuses_provider_logins(tmp_path):
    from hubkiln.deliver.local import boot_locally
    from hubkiln.errors import HubkilnError

    github = with_hub(load_profile("ci"), hub={"authenticator": "github"})
    out = tmp_path / "ci"
    out.mkdir()
    (out / "manifest.json").write_text('{"files": [{"name": "x.qcow2", "format": "qcow2"}]}')
    (out / "x.qcow2").write_bytes(b"")
    with pytest.raises(HubkilnError, match="logs in with github, which cannot work on a VM"):
        boot_locally(github, "ci", demo_launch(), output_root=tmp_path, say=lambda _: None)


def test_local_launch_drops_the_domain():
    launch = load_launch(EXAMPLE)
    local, (note,) = local_launch(launch)
    assert local["domain"] is None and local["acme_email"] is None
    assert "ignoring domain hub.example.org" in note
    assert local_launch(demo_launch()) == (demo_launch(), [])


def test_login_and_ssh_instructions():
    demo = demo_launch()
    (line,) = login_instructions("firstuse", demo, 8443)
    assert "student1, student2" in line and "enrolment code" in line
    _, issued = issue_credentials(demo)
    lines = login_instructions("firstuse", demo, 8443, issued)
    assert f"admin teacher: password {issued.admin_passwords['teacher']}" in lines
    assert f"student student1: enrolment code {issued.enrolment_codes['student1']}" in lines
    (line,) = login_instructions("github", demo, 8443)
    assert "https://127.0.0.1:8443/hub/oauth_callback" in line
    assert ssh_instructions(demo, 2222, None) is None
    command = ssh_instructions(demo, 2222, Path("/k/demo-key"))
    assert command.startswith("ssh -i /k/demo-key -p 2222 ") and command.endswith(
        "teacher-admin@127.0.0.1")


def test_launch_without_a_build_says_to_build(tmp_path):
    with pytest.raises(BuildError) as info:
        find_built_image(load_profile("ci"), "ci", output_root=tmp_path)
    assert "manifest.json is missing" in info.value.message
    assert info.value.hint == "run `invoke build --profile=ci` first"


def test_launch_finds_the_qcow2_of_the_manifest(tmp_path):
    out = tmp_path / "ci"
    out.mkdir()
    (out / "manifest.json").write_text('{"files": [{"name": "x.qcow2", "format": "qcow2"}]}')
    with pytest.raises(BuildError, match="x.qcow2 .* is missing"):
        find_built_image(load_profile("ci"), "ci", output_root=tmp_path)
    (out / "x.qcow2").write_bytes(b"")
    assert find_built_image(load_profile("ci"), "ci", output_root=tmp_path) == out / "x.qcow2"


@needs_openssl
def test_login_page_answers_over_self_signed_https(tmp_path, monkeypatch):
    cert, key = make_cert(tmp_path, "local", "localhost")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # must be ignored
    try:
        assert login_page_answers(f"https://127.0.0.1:{port}/", timeout=5)
        assert not login_page_answers(f"https://127.0.0.1:{port}/missing", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert not login_page_answers(f"https://127.0.0.1:{port}/", timeout=2)


# --- writing seeds and the `invoke seed` command ------------------------------------------------


def test_write_seed_writes_private_user_data(tmp_path):
    target = tmp_path / "sub" / "user-data.yaml"
    assert write_seed(load_launch(EXAMPLE), user_data=target) == [target]
    assert target.read_text() == render_user_data(load_launch(EXAMPLE))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["user-data.yaml"]


def invoke(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("invoke")), "-r", str(PROJECT), "seed", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"})


@needs_xorriso
def test_invoke_seed_writes_an_iso_with_the_user_data(tmp_path):
    result = invoke("--config", str(EXAMPLE), "--output", "seed.iso", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote seed.iso (mode 0600)" in result.stdout and "students: 3" in result.stdout
    iso = tmp_path / "seed.iso"
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600
    data = iso.read_bytes()
    assert b"CIDATA" in data.upper()
    assert b"local-hostname: optim-hub" in data
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "seed.admin-passwords.txt", "seed.enrolment-codes.csv", "seed.iso"]
    # The secrets go beside the seed (0600), only their hashes into it.
    (name, password), = [line.split("\t") for line in
                         (tmp_path / "seed.admin-passwords.txt").read_text().splitlines()]
    assert name == "teacher" and f"admin teacher: hub password {password}" in result.stdout
    codes = (tmp_path / "seed.enrolment-codes.csv").read_text().splitlines()
    assert codes[0] == "name,enrolment_code" and [c.split(",")[0] for c in codes[1:]] == [
        "alice", "bob", "carol"]
    for secret in [password] + [c.split(",")[1] for c in codes[1:]]:
        assert secret.encode() not in data
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert data.count(b"pbkdf2-sha256$") == 4


def test_invoke_seed_user_data_only(tmp_path):
    result = invoke("--config", str(EXAMPLE), "--user-data", "ud.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ud.admin-passwords.txt", "ud.enrolment-codes.csv", "ud.yaml"]
    user_data = yaml.safe_load((tmp_path / "ud.yaml").read_text())
    document = yaml.safe_load(user_data["write_files"][0]["content"])
    codes = dict(line.split(",") for line in
                 (tmp_path / "ud.enrolment-codes.csv").read_text().splitlines()[1:])
    verify = guest.auth().verify_secret
    for name, code in codes.items():
        assert verify(code, document["enrolment_code_hashes"][name])
    (name, password), = [line.split("\t") for line in
                         (tmp_path / "ud.admin-passwords.txt").read_text().splitlines()]
    assert verify(password, document["admin_password_hashes"][name])
    assert not verify(password + "x", document["admin_password_hashes"][name])


def test_seed_issues_no_code_when_codes_are_off_and_keeps_given_hashes(in_tmp):
    given = guest.auth().hash_secret("the-operators-own")
    launch = load_launch(write(in_tmp, "admins: [teacher]\nusers: [alice]\n"
                                       "enrolment_codes: false\n"
                               f"admin_password_hashes: {{teacher: '{given}'}}\n"))
    issued_launch, issued = issue_credentials(launch)
    assert issued == Credentials({}, {})
    assert issued_launch["admin_password_hashes"] == {"teacher": given}
    assert issued_launch["enrolment_code_hashes"] == {}


def test_hashes_must_name_listed_people(in_tmp):
    digest = guest.auth().hash_secret("x")
    with pytest.raises(LaunchError) as info:
        load_launch(write(in_tmp, f"admins: [teacher]\nusers: [alice]\n"
                                  f"admin_password_hashes: {{bob: '{digest}'}}\n"
                                  f"enrolment_code_hashes: {{teacher: 'nope'}}\n"))
    text = "\n".join(info.value.problems)
    assert "admin_password_hashes.bob: 'bob' is not in `admins`" in text
    # A mistyped code or password in place of its hash is never echoed.
    assert "enrolment_code_hashes.teacher: (value hidden) is not a bcrypt" in text
    assert "nope" not in text


def test_invoke_seed_writes_nothing_on_errors(tmp_path):
    (tmp_path / "launch.yaml").write_text("userz: [alice]\nadmins: [Root]\n")
    result = invoke("--config", "launch.yaml", "--output", "out/seed.iso", "--user-data",
                    "out/ud.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "launch.yaml: userz: unknown key 'userz' (did you mean 'users'?)" in result.stderr
    assert "launch.yaml: admins[0]: 'Root' is not a user name" in result.stderr
    assert "nothing was written" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["launch.yaml"]


def test_invoke_seed_checks_against_a_profile(tmp_path):
    result = invoke("--config", str(EXAMPLE), "--profile", "ci", "--user-data", "u.yaml",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_invoke_seed_without_config_says_what_to_give(tmp_path):
    result = invoke(cwd=tmp_path)
    assert result.returncode == 1 and "--config FILE" in result.stderr


# --- another ACME CA (acme_ca, acme_ca_root) ---------------------------------------------

UNI_CA = "https://acme.uni.example/acme/directory"


@needs_openssl
def test_an_acme_ca_with_its_root_loads_and_is_summarized(in_tmp):
    from hubkiln.deliver.seed import summarize

    root, _ = make_cert(in_tmp, "root", "Uni Root CA")
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"users": ["a"], "domain": "hub.example.org",
                                    "acme_ca": UNI_CA, "acme_ca_root": root.read_text()}))
    launch = load_launch(path)
    assert launch["acme_ca"] == UNI_CA and launch["acme_ca_root"] == root.read_text()
    assert summarize(launch, "auto")[-1] == (f"HTTPS: ACME ({UNI_CA}) for hub.example.org, "
                                             "self-signed until it issues")
    plain = load_launch(write(in_tmp, "users: [a]\ndomain: hub.example.org\n", "le.yaml"))
    assert summarize(plain, "auto")[-1] == ("HTTPS: ACME (Let's Encrypt) for hub.example.org, "
                                            "self-signed until it issues")
    assert "Let's Encrypt for" not in " ".join(summarize(launch) + summarize(plain))
    # Without the profile the summary says which image it assumes.
    assert summarize(plain)[-1].endswith("(if the image's tls.mode is auto; --profile checks)")
    # The image's own plan: a self-signed image ignores the domain, a provided one needs tls.
    assert summarize(plain, "self-signed")[-1] == "HTTPS: self-signed"
    assert summarize(plain, "provided")[-1].startswith("HTTPS: not planned: tls: this image's "
                                                       "tls.mode is 'provided'")


@pytest.mark.parametrize(("text", "key", "words"), [
    ("domain: hub.example.org\nacme_ca: http://acme.uni.example/directory\n",
     "acme_ca", "is not an https:// directory URL"),
    ("domain: hub.example.org\nacme_ca: 'https://acme.uni.example/dir?x=1'\n",
     "acme_ca", "is not an https:// directory URL"),
    ("acme_ca: https://acme.uni.example/directory\n", "acme_ca", "is used only with a `domain`"),
    ("domain: hub.example.org\nacme_ca_root: 'not a certificate'\n",
     "acme_ca_root", "is the root of the CA named in `acme_ca`"),
])
def test_bad_acme_ca_settings_are_named(in_tmp, text, key, words):
    found = problems_of(write(in_tmp, "users: [a]\n" + text), openssl=None)
    assert any(p.startswith(f"launch.yaml: {key}: ") and words in p for p in found), found
    # The same settings with the key left out are fine: the key is what is wrong.
    good = "".join(line + "\n" for line in text.splitlines() if not line.startswith(key))
    load_launch(write(in_tmp, "users: [a]\n" + good, "good.yaml"), openssl=None)


def test_an_acme_ca_root_must_be_a_pem_certificate(in_tmp):
    path = write(in_tmp, "users: [a]\ndomain: hub.example.org\n"
                 f"acme_ca: {UNI_CA}\nacme_ca_root: 'just text'\n")
    assert the_problem(path, openssl=None) == ("launch.yaml: acme_ca_root: is not a PEM "
                                               "certificate (it should start with -----BEGIN "
                                               "CERTIFICATE-----)")


@needs_openssl
def test_an_expired_acme_ca_root_is_refused(in_tmp):
    old, _ = make_expired_cert(in_tmp)
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"users": ["a"], "domain": "hub.example.org",
                                    "acme_ca": UNI_CA, "acme_ca_root": old.read_text()}))
    assert the_problem(path) == "launch.yaml: acme_ca_root: has expired"


@needs_openssl
def test_an_expired_login_provider_root_is_refused(in_tmp):
    old, _ = make_expired_cert(in_tmp)
    path = write(in_tmp, "")
    path.write_text(yaml.safe_dump({"users": ["a"], "domain": "hub.example.org", "oauth": {
        "client_id": "c", "client_secret": "s", "authorize_url": "https://idp.example/a",
        "token_url": "https://idp.example/t", "userdata_url": "https://idp.example/u",
        "ca_certificate": old.read_text()}}))
    assert the_problem(path) == "launch.yaml: oauth.ca_certificate: has expired"


def test_a_local_launch_drops_the_acme_ca_with_the_domain(in_tmp):
    path = write(in_tmp, f"users: [a]\ndomain: hub.example.org\nacme_ca: {UNI_CA}\n")
    launch, notes = local_launch(load_launch(path, openssl=None))
    assert launch["domain"] is None and launch["acme_ca"] is None and notes
    # What the image then receives passes the image's own rule.
    assert guest.front().acme_problems(launch.data) == []

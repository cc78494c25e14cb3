# shellcheck shell=bash
# Shared helpers for the provisioning scripts under provision/. Sourced, never run.
#
# Scope: logging (announce, die), a root check, chroot detection, a scratch
# directory removed on exit, and the Python installer (uv when it can be had,
# pip otherwise). Limits: bash only; the scripts must run from a copy of the
# whole provision/ directory (lib/ and files/ beside the scripts).

umask 022
export LANG="${LANG:-C.UTF-8}" DEBIAN_FRONTEND=noninteractive

# shellcheck disable=SC2034  # used by the scripts that source this file
HUBKILN_PREFIX=/opt/hubkiln
HUBKILN_FILES="$(cd "$(dirname "${BASH_SOURCE[0]}")/../files" && pwd)"
# Build-only apt proxy drop-in: written by 10-apt-packages.sh, removed by 90-seal.sh.
# shellcheck disable=SC2034  # used by the scripts that source this file
HUBKILN_APT_PROXY_DROPIN=/etc/apt/apt.conf.d/00hubkiln-build-proxy
# Wait for the dpkg lock (cloud-init or unattended-upgrades may hold it at boot).
# shellcheck disable=SC2034  # used by the scripts that source this file
HUBKILN_APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

announce() { printf '==> [%s] %s\n' "${0##*/}" "$*"; }
warn() { printf 'WARNING: [%s] %s\n' "${0##*/}" "$*" >&2; }
die() { printf 'ERROR: [%s] %s\n' "${0##*/}" "$*" >&2; exit 1; }

# split_words ARRAY STRING: set ARRAY to the words of STRING (spaces, tabs or
# newlines between them; no globbing).
split_words() {
    local -n _words=$1
    read -r -d '' -a _words < <(printf '%s\0' "$2")
}

require_root() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (run it with sudo)"
}

# True inside a chroot, false on a booted system (VM over SSH): compares our /
# with init's /, as systemd-detect-virt --chroot does. That tool is not used
# because it fails ("Permission denied") where /proc/1/root cannot be read and
# then answers "no". Here, when /proc/1/root cannot be read (no /proc, or a
# sandboxed build host), we answer "chroot": on a booted VM root can read it,
# and "chroot" is the safe side (no fstrim or journalctl against the host).
in_chroot() {
    local init_root
    init_root="$(stat -Lc %d:%i /proc/1/root/. 2>/dev/null)" || return 0
    [[ "$(stat -Lc %d:%i /)" != "$init_root" ]]
}

# make_scratch: create $SCRATCH, also exported as TMPDIR, on disk (large wheels
# may not fit a tmpfs /tmp), and remove it when the script exits, whatever the status.
make_scratch() {
    SCRATCH="$(mktemp -d /var/tmp/hubkiln-build.XXXXXX)"
    trap 'rm -rf -- "$SCRATCH"' EXIT
    export TMPDIR="$SCRATCH" # tools' own temp files (uv locks, pip builds) go too
}

# inputs_digest WORDS...: one sha256 over the given words plus the running
# script and this library (a changed recipe is a changed input), to stamp an install.
inputs_digest() {
    { printf '%s\n' "$@"; cat "$0" "${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1
}

# setup_python_installer: choose how to install into a venv and set PYINSTALL
# to "uv" or "pip". Needs $SCRATCH. uv comes from HUBKILN_UV, or is installed
# from the package index into a throwaway venv in $SCRATCH (pinned, hashed);
# when that fails, pip from the same throwaway venv is used instead.
setup_python_installer() {
    export UV_CACHE_DIR="$SCRATCH/uv-cache" UV_PYTHON_DOWNLOADS=never
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    # uv trusts the build CA through SSL_CERT_FILE and finds a proxy through
    # https_proxy, both exported by the runner: no --system-certs needed.
    if [[ -n "${HUBKILN_UV:-}" ]]; then
        [[ -x "$HUBKILN_UV" ]] || die "HUBKILN_UV=$HUBKILN_UV is not an executable uv binary"
        UV="$HUBKILN_UV"
        PYINSTALL=uv
        announce "using uv from HUBKILN_UV: $("$UV" --version)"
        return
    fi
    announce "creating a throwaway venv for the installer"
    python3 -m venv "$SCRATCH/tools"
    announce "installing uv into the throwaway venv"
    if "$SCRATCH/tools/bin/pip" install --quiet --no-cache-dir --only-binary :all: \
        --require-hashes -r "$HUBKILN_FILES/uv-requirements.txt"; then
        UV="$SCRATCH/tools/bin/uv"
        PYINSTALL=uv
        announce "using $("$UV" --version)"
    else
        warn "could not install uv; falling back to pip (slower)"
        PYINSTALL=pip
    fi
}

# py_install PYTHON ARGS...: install packages (pip-style ARGS) into the venv
# that owns interpreter PYTHON, with no cache left behind.
py_install() {
    local python=$1
    shift
    if [[ "$PYINSTALL" == uv ]]; then
        "$UV" pip install --python "$python" "$@"
    else
        "$SCRATCH/tools/bin/pip" --python "$python" install --no-cache-dir "$@"
    fi
}

# make_venv DIR: create an empty venv (no pip) owned by root.
make_venv() {
    python3 -m venv --without-pip "$1"
}

# seal_env DIR: byte-compile (students cannot write .pyc into a root-owned
# env, and uv writes none) and make the tree root-owned, not group/other-writable.
seal_env() {
    local dir=$1
    announce "byte-compiling $dir"
    # -q prints only errors. Some packages ship files that are not valid Python
    # for this interpreter (templates, py2 leftovers): compileall then exits 1
    # after compiling everything else. Those files cannot be imported anyway,
    # so we list them and go on.
    if ! "$dir/bin/python" -m compileall -q -j 0 "$dir/lib" >"$SCRATCH/compileall.log" 2>&1; then
        warn "compileall could not compile some files in $dir:"
        sed -n '/^\*\*\*/p' "$SCRATCH/compileall.log" >&2
    fi
    rm -f "$dir/.lock" # uv's lock against concurrent installs
    announce "making $dir root-owned and read-only for others"
    chown -R root:root "$dir"
    chmod -R go-w "$dir"
    check_root_owned "$dir"
}

# check_root_owned DIR: fail if anything in DIR (symlinks aside) is not owned
# by root or is writable by group or others.
check_root_owned() {
    local bad
    bad="$(find "$1" ! -type l \( ! -user root -o ! -group root -o -perm /022 \) -print -quit)"
    [[ -z "$bad" ]] || die "$bad is writable by non-root users or not owned by root"
}

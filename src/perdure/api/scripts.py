"""``/api/v1/scripts/install-worker``: the installer a fresh node pipes into ``sh`` (cf. mmab's
``/api/v1/scripts/install-pagent``, run from a launch template's user data), and the wheelhouse it
installs from (``/api/v1/scripts/wheelhouse``: this server's own perdure and the worker's
dependencies, ``perdure/wheelhouse.py``), so a node needs no package index.

Every value that reaches the script is validated to a narrow character set first and then
shell-quoted, so a crafted query string cannot add commands; the systemd unit is written by ``printf``
with those values as arguments, never as format strings. The wheels' SHA-256 sums are part of the
script, so what the node installs is what the server built.
"""

from __future__ import annotations

import re
import shlex
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse

from perdure import __version__, wheelhouse
from perdure.api import openapi as oa
from perdure.api.context import ctx
from perdure.errors import BadRequest, NotFound, NotImplementedOp
from perdure.store.clients import GROUP_PATTERN

router = APIRouter()
#: Scheme, host (name, IPv4 or bracketed IPv6), optional port and plain path: nothing a shell,
#: systemd (``%``, ``$``) or a URL parser could read twice.
_SERVER_URL = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")
#: Clientgroup tokens are ``name=<group>|id=<uuid>|sig=<urlsafe base64>``.
_TOKEN = re.compile(r"^[A-Za-z0-9=|._~+/:-]{1,1024}$")
#: An absolute path of plain names (no ``..``): safe in a shell word and in a systemd ``ExecStart``.
_WORKPATH = re.compile(r"/[A-Za-z0-9._/-]{0,255}")
#: ``*``, or command names separated by commas (the worker's ``--apps``).
_APPS = re.compile(r"\*|[A-Za-z0-9._+-]{1,128}(,[A-Za-z0-9._+-]{1,128}){0,63}")
_SLOTS = re.compile(r"[0-9]{1,4}")
_MAX_SLOTS = 1024  # the worker's own bound (WorkerConfig.slots)
_WHEEL_NAME = re.compile(r"[A-Za-z0-9._+-]+\.whl")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PYTHON = re.compile(r"[0-9]+\.[0-9]+")
WHEELHOUSE_PATH = "/api/v1/scripts/wheelhouse"


def _wheelhouse(request: Request) -> wheelhouse.Wheelhouse:
    """This server's wheelhouse, built into its data directory on first use."""
    try:
        return wheelhouse.ensure(ctx(request).settings.data_dir / "wheelhouse")
    except wheelhouse.WheelhouseError as exc:
        raise NotImplementedOp(f"this server cannot serve worker wheels: {exc}") from None


@router.get(
    "/api/v1/scripts/install-worker",
    openapi_extra=oa.query(
        oa.text("server", "The server URL the worker is to use (default: this one)"),
        oa.text("group", "The worker's client group (default: default)"),
        oa.text("token", "A clientgroup token"),
        oa.integer("slots", "Workunits the node runs at once (default 1)", minimum=1, maximum=_MAX_SLOTS),
        oa.text("workpath", "Absolute directory for work (default /var/lib/perdure, or PREFIX/work)"),
        oa.text("apps", "Commands the node runs, comma-separated, or '*' (default: all)"),
    ),
    responses=oa.errors(400, 501, management=True),
)
def install_worker(request: Request) -> PlainTextResponse:
    """A shell script that installs this server's perdure and the worker's dependencies from its
    wheelhouse into a virtual environment (no package index), writes the token to a 0600 file, and
    starts ``perdure worker`` with these options under systemd (or, ``sh -s -- --no-systemd --prefix
    DIR``, without it)."""
    qp = request.query_params
    server = qp.get("server") or str(request.base_url)
    server = server.rstrip("/")
    if len(server) > 2048 or not _SERVER_URL.fullmatch(server) or not urlsplit(server).hostname:
        raise BadRequest("server must be an http(s) URL: scheme, host, optional port and path")
    group = qp.get("group") or "default"
    if not re.fullmatch(GROUP_PATTERN, group):
        raise BadRequest("group must be 1-128 letters, digits, '.', '_' or '-'")
    token = qp.get("token") or ""
    if token and not _TOKEN.fullmatch(token):
        raise BadRequest("token is not a clientgroup token")
    slots_text = qp.get("slots") or "1"
    if not _SLOTS.fullmatch(slots_text) or not 1 <= int(slots_text) <= _MAX_SLOTS:
        raise BadRequest(f"slots must be a whole number from 1 to {_MAX_SLOTS}")
    workpath = qp.get("workpath") or ""
    if workpath and (not _WORKPATH.fullmatch(workpath) or ".." in workpath.split("/")):
        raise BadRequest(
            "workpath must be an absolute path of letters, digits, '.', '_', '-' and '/', without '..'"
        )
    apps = qp.get("apps") or ""
    if apps and not _APPS.fullmatch(apps):
        raise BadRequest(
            "apps must be '*' or up to 64 command names (letters, digits, '.', '_', '+', '-') "
            "separated by commas"
        )
    text = install_script(
        server, group, token, slots=int(slots_text), workpath=workpath, apps=apps, house=_wheelhouse(request)
    )
    return PlainTextResponse(text, media_type="text/x-shellscript")


@router.get(WHEELHOUSE_PATH, responses=oa.errors(501, management=True))
def wheelhouse_manifest(request: Request) -> JSONResponse:
    """What a node installs: perdure's version (the server's), the Python the wheels are for, and each
    wheel's name, size and SHA-256."""
    house = _wheelhouse(request)
    document: dict[str, Any] = house.to_json()
    for wheel in document["wheels"]:
        wheel["url"] = f"{WHEELHOUSE_PATH}/{wheel['filename']}"
    return JSONResponse(document)


@router.get(WHEELHOUSE_PATH + "/{filename}", responses=oa.errors(404, 501, management=True))
def wheelhouse_file(request: Request, filename: str) -> FileResponse:
    """One wheel of the manifest; any other name is a 404."""
    path = _wheelhouse(request).path(filename)
    if path is None:
        raise NotFound(f"no wheel {filename!r} in this server's wheelhouse")
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


def install_script(
    server: str,
    group: str,
    token: str = "",
    *,
    slots: int = 1,
    workpath: str = "",
    apps: str = "",
    house: wheelhouse.Wheelhouse,
) -> str:
    """The installer for a worker of ``group`` talking to ``server`` (values already validated)."""
    lines = []
    pip_wheel = ""
    for wheel in house.wheels:
        if not _WHEEL_NAME.fullmatch(wheel.filename) or not _SHA256.fullmatch(wheel.sha256):
            raise NotImplementedOp(f"the wheelhouse lists an unusable wheel: {wheel.filename!r}")
        if wheel.filename.startswith("pip-"):
            pip_wheel = wheel.filename
        lines.append(f"{wheel.sha256}  {wheel.filename}")
    if not _PYTHON.fullmatch(house.python):
        raise NotImplementedOp(f"the wheelhouse names an unusable Python version: {house.python!r}")
    return _TEMPLATE.format(
        version=__version__,
        server=shlex.quote(server),
        group=shlex.quote(group),
        token=shlex.quote(token),
        slots=slots,
        workpath=shlex.quote(workpath),
        apps=shlex.quote(apps),
        python=house.python,
        python_tuple=house.python.replace(".", ", "),
        wheels=shlex.quote("\n".join(lines)),
        pip_wheel=shlex.quote(pip_wheel),
        wheelhouse_path=WHEELHOUSE_PATH,
    )


_TEMPLATE = r"""#!/bin/sh
# Install and start a Perdure {version} worker on this node, from the server's own wheels (no index).
#   curl -fsS '<server>/api/v1/scripts/install-worker?group=<group>&slots=4' | sudo sh
#   curl -fsS '<server>/api/v1/scripts/install-worker' | sh -s -- --no-systemd --prefix "$HOME/perdure"
# Options: --prefix DIR (default /opt/perdure; the virtual environment is DIR/venv), --no-systemd
# (install into DIR as any user, files in DIR/etc, DIR/log, DIR/work, and start the worker without
# systemd), --no-start (install, print the worker's command, start nothing).
# Environment: PERDURE_TOKEN (clientgroup token), PERDURE_PYTHON (the python{python} to use),
# PERDURE_PREFIX, PERDURE_ETC_DIR, PERDURE_LOG_DIR, PERDURE_UNIT_DIR, PERDURE_INIT (systemd or nohup).
set -eu

# Everything runs from main, so a script piped into sh is read whole before any of it runs.
main() {{
    server={server}
    group={group}
    token={token}
    slots={slots}
    workpath={workpath}
    apps={apps}
    python_version={python}
    # sha256 and file name of every wheel to install, perdure's first.
    wheels={wheels}
    pip_wheel={pip_wheel}
    if [ -n "${{PERDURE_TOKEN:-}}" ]; then token=$PERDURE_TOKEN; fi
    unset PERDURE_TOKEN  # nothing this script starts inherits it

    say() {{ printf 'perdure-install: %s\n' "$*" >&2; }}

    prefix="${{PERDURE_PREFIX:-}}"
    init="${{PERDURE_INIT:-}}"
    start=yes
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix) [ $# -ge 2 ] || {{ say "--prefix needs a directory"; exit 2; }}; prefix=$2; shift ;;
            --prefix=*) prefix=${{1#--prefix=}} ;;
            --no-systemd) init=nohup; venv_only=yes ;;
            --no-start) start=no ;;
            *) say "unknown option $1 (known: --prefix DIR, --no-systemd, --no-start)"; exit 2 ;;
        esac
        shift
    done
    venv_only=${{venv_only:-no}}
    if [ "$(id -u)" -ne 0 ] && [ "$venv_only" = no ] && [ -z "$prefix" ]; then
        say "run as root, or install into a directory of yours with --no-systemd --prefix DIR"
        exit 1
    fi
    prefix=${{prefix:-/opt/perdure}}
    case $prefix in /*) ;; *) prefix="$(pwd)/$prefix" ;; esac
    case $prefix in
        *[!A-Za-z0-9._/-]*) say "--prefix must be a path of letters, digits, '.', '_', '-' and '/'"; exit 2 ;;
    esac
    if [ "$venv_only" = yes ]; then
        etc_dir="${{PERDURE_ETC_DIR:-$prefix/etc}}"
        log_dir="${{PERDURE_LOG_DIR:-$prefix/log}}"
        workpath=${{workpath:-$prefix/work}}
    else
        etc_dir="${{PERDURE_ETC_DIR:-/etc/perdure}}"
        log_dir="${{PERDURE_LOG_DIR:-/var/log/perdure}}"
        workpath=${{workpath:-/var/lib/perdure}}
    fi
    unit_dir="${{PERDURE_UNIT_DIR:-/etc/systemd/system}}"
    venv="$prefix/venv"

    # The wheels are built for the server's Python ({python}): use that version, installing it from
    # the OS's own packages (apt-get, dnf, yum) when the node lacks it or its venv module.
    python_ok() {{
        "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == ({python_tuple}) else 1)' >/dev/null 2>&1
    }}
    find_python() {{
        for candidate in ${{PERDURE_PYTHON:-}} "python$python_version" python3; do
            if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
                py=$(command -v "$candidate")
                return 0
            fi
        done
        return 1
    }}
    os_install() {{
        say "installing python$python_version and its venv module from the OS's packages"
        if command -v apt-get >/dev/null 2>&1; then
            DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$python_version" \
                "python$python_version-venv" >&2
        elif command -v dnf >/dev/null 2>&1; then
            dnf install -y -q "python$python_version" >&2
        elif command -v yum >/dev/null 2>&1; then
            yum install -y -q "python$python_version" >&2
        else
            return 1
        fi
    }}
    make_venv() {{
        if [ -n "$pip_wheel" ]; then
            "$py" -m venv --clear --without-pip "$venv" >&2
        else
            "$py" -m venv --clear "$venv" >&2
        fi
    }}
    if [ -z "$init" ]; then
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            init=systemd
        else
            init=nohup
        fi
    fi
    # A worker this installer started before runs from the environment about to be made anew: stop it
    # first (SIGTERM: it hands its running work over, checkpointed, within its deadline).
    if [ "$init" = systemd ]; then
        if systemctl is-active --quiet perdure-worker.service; then
            say "stopping perdure-worker.service (it hands its work over)"
            systemctl stop perdure-worker.service
        fi
    elif [ -f "$etc_dir/worker.pid" ]; then
        # Running (an exited process has an empty command line) and ours, not a reused pid.
        ours() {{
            [ -r "/proc/$1/cmdline" ] && tr '\000' ' ' < "/proc/$1/cmdline" | grep -qF "$venv/bin/perdure"
        }}
        old=$(cat "$etc_dir/worker.pid")
        case $old in ''|*[!0-9]*) old= ;; esac
        if [ -n "$old" ] && ours "$old"; then
            say "stopping the worker started before (pid $old); it hands its work over"
            kill -TERM "$old" 2>/dev/null || true
            waited=0
            while ours "$old" && [ "$waited" -lt 150 ]; do
                sleep 1
                waited=$((waited + 1))
            done
        fi
    fi

    py=
    if ! find_python; then
        os_install || true
        find_python || {{ say "this node has no python$python_version, which the wheels need"; exit 1; }}
    fi
    if ! make_venv; then
        os_install
        make_venv
    fi

    fetch() {{
        if command -v curl >/dev/null 2>&1; then
            curl -fsS --retry 3 -o "$2" "$1"
        elif command -v wget >/dev/null 2>&1; then
            wget -q -O "$2" "$1"
        else
            "$py" -c 'import sys, urllib.request as u; u.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
        fi
    }}
    sha256() {{
        if command -v sha256sum >/dev/null 2>&1; then
            sha256sum "$1" | cut -d' ' -f1
        else
            code='import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())'
            "$py" -c "$code" "$1"
        fi
    }}
    wheelhouse="$prefix/wheelhouse"
    rm -rf "$wheelhouse"
    mkdir -p "$wheelhouse"
    say "installing perdure {version} into $venv from $server"
    set --
    while read -r sum file; do
        [ -n "$file" ] || continue
        fetch "$server{wheelhouse_path}/$file" "$wheelhouse/$file"
        if [ "$(sha256 "$wheelhouse/$file")" != "$sum" ]; then
            say "$file: its SHA-256 is not the one the server announced; nothing installed"
            exit 1
        fi
        if [ "$file" != "$pip_wheel" ]; then set -- "$@" "$wheelhouse/$file"; fi
    done <<EOF
$wheels
EOF
    # No index, no dependency resolution: the wheelhouse is the worker's whole set of packages.
    if [ -n "$pip_wheel" ]; then
        pip="$venv/bin/python $wheelhouse/$pip_wheel/pip"
    else
        pip="$venv/bin/python -m pip"
    fi
    $pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check "$@" >&2
    rm -rf "$wheelhouse"

    (umask 077 && mkdir -p "$etc_dir")
    mkdir -p "$log_dir" "$workpath"
    # The token goes to a file of mode 0600 the worker reads (--token-file): never on a command line,
    # where ps and /proc/<pid>/cmdline would show it, nor in the worker's environment.
    token_file="$etc_dir/worker.token"
    rm -f "$etc_dir/worker.env"
    if [ -n "$token" ]; then
        (umask 077 && printf '%s\n' "$token" > "$token_file.tmp")
        mv "$token_file.tmp" "$token_file"
    fi

    set -- worker --server "$server" --group "$group" --slots "$slots" --workpath "$workpath"
    if [ -n "$apps" ]; then set -- "$@" --apps "$apps"; fi
    if [ -n "$token" ]; then set -- "$@" --token-file "$token_file"; fi

    if [ "$start" = no ]; then
        say "installed; start the worker with:"
        printf '%s' "$venv/bin/perdure"
        printf ' %s' "$@"
        printf '\n'
    elif [ "$init" = systemd ]; then
        mkdir -p "$unit_dir"
        {{
            printf '%s\n' '[Unit]' 'Description=Perdure worker' 'Wants=network-online.target' \
                'After=network-online.target' '' '[Service]' 'Type=simple'
            printf 'ExecStart=%s' "$venv/bin/perdure"
            printf ' %s' "$@"
            printf '\n'
            # SIGTERM to the worker alone (KillMode=mixed): it hands running work over, checkpointing
            # it, within its 120 s deadline; the workunits must not get the signal from systemd first.
            printf '%s\n' 'Restart=always' 'RestartSec=5' 'KillMode=mixed' 'TimeoutStopSec=150'
            printf 'StandardOutput=append:%s/worker.log\n' "$log_dir"
            printf '%s\n' 'StandardError=inherit' '' '[Install]' 'WantedBy=multi-user.target'
        }} > "$unit_dir/perdure-worker.service.tmp"
        mv "$unit_dir/perdure-worker.service.tmp" "$unit_dir/perdure-worker.service"
        systemctl daemon-reload
        systemctl enable perdure-worker.service
        systemctl restart perdure-worker.service
        say "perdure-worker.service started; log: $log_dir/worker.log"
    else
        nohup "$venv/bin/perdure" "$@" >> "$log_dir/worker.log" 2>&1 < /dev/null &
        printf '%s\n' "$!" > "$etc_dir/worker.pid"
        say "worker started without systemd (pid $!): $venv/bin/perdure $*"
        say "log: $log_dir/worker.log"
    fi
}}

main "$@"
"""

"""``/api/v1/scripts/install-worker``: the installer a fresh node pipes into ``sh`` (cf. mmab's
``/api/v1/scripts/install-pagent``, run from a launch template's user data).

Every value that reaches the script is validated to a narrow character set first and then
shell-quoted, so a crafted query string cannot add commands; the systemd unit is written by ``printf``
with those values as arguments, never as format strings.
"""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse

from perdure import __version__
from perdure.api import openapi as oa
from perdure.errors import BadRequest
from perdure.store.clients import GROUP_PATTERN

router = APIRouter()
#: Scheme, host (name, IPv4 or bracketed IPv6), optional port and plain path: nothing a shell,
#: systemd (``%``, ``$``) or a URL parser could read twice.
_SERVER_URL = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")
#: Clientgroup tokens are ``name=<group>|id=<uuid>|sig=<urlsafe base64>``.
_TOKEN = re.compile(r"^[A-Za-z0-9=|._~+/:-]{1,1024}$")
_VERSION = re.compile(r"^[A-Za-z0-9.+!_-]+$")


@router.get(
    "/api/v1/scripts/install-worker",
    openapi_extra=oa.query(
        oa.text("server", "The server URL the worker is to use (default: this one)"),
        oa.text("group", "The worker's client group (default: default)"),
        oa.text("token", "A clientgroup token"),
    ),
    responses=oa.errors(400, management=True),
)
def install_worker(request: Request) -> PlainTextResponse:
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
    return PlainTextResponse(install_script(server, group, token), media_type="text/x-shellscript")


def install_script(server: str, group: str, token: str = "") -> str:
    """The installer for a worker of ``group`` talking to ``server`` (values already validated)."""
    pip_spec = f"perdure=={__version__}" if _VERSION.fullmatch(__version__) else "perdure"
    arguments = f"worker --server {server} --group {group}"
    return _TEMPLATE.format(
        version=__version__,
        server=shlex.quote(server),
        group=shlex.quote(group),
        token=shlex.quote(token),
        pip_spec=pip_spec,
        unit_arguments=shlex.quote(arguments),
    )


_TEMPLATE = r"""#!/bin/sh
# Install and start a Perdure {version} worker on this node.
#   curl -fsS '<server>/api/v1/scripts/install-worker?group=<group>' | sudo sh
# Environment: PERDURE_TOKEN (clientgroup token), PERDURE_PIP_SPEC (what pip installs),
# PERDURE_PREFIX (default /opt/perdure), PERDURE_INIT (systemd or nohup; default: detect).
set -eu

# Everything runs from main, so a script piped into sh is read whole before any of it runs.
main() {{
    server={server}
    group={group}
    token={token}
    if [ -n "${{PERDURE_TOKEN:-}}" ]; then token=$PERDURE_TOKEN; fi
    unset PERDURE_TOKEN  # nothing this script starts inherits it
    pip_spec="${{PERDURE_PIP_SPEC:-{pip_spec}}}"
    prefix="${{PERDURE_PREFIX:-/opt/perdure}}"
    etc_dir="${{PERDURE_ETC_DIR:-/etc/perdure}}"
    log_dir="${{PERDURE_LOG_DIR:-/var/log/perdure}}"
    unit_dir="${{PERDURE_UNIT_DIR:-/etc/systemd/system}}"

    say() {{ printf 'perdure-install: %s\n' "$*" >&2; }}

    if [ "$(id -u)" -ne 0 ] && [ -z "${{PERDURE_PREFIX:-}}" ]; then
        say "run as root (or set PERDURE_PREFIX and the other *_DIR variables to writable places)"
        exit 1
    fi
    command -v python3 >/dev/null 2>&1 || {{ say "python3 is required"; exit 1; }}

    say "installing $pip_spec into $prefix"
    if ! python3 -m venv "$prefix"; then
        if command -v apt-get >/dev/null 2>&1; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
            python3 -m venv "$prefix"
        else
            say "python3 cannot create a virtual environment (install its venv module)"
            exit 1
        fi
    fi
    "$prefix/bin/pip" install --quiet --upgrade "$pip_spec"

    mkdir -p "$etc_dir" "$log_dir"
    # The token goes to a file of mode 0600 the worker reads (--token-file): never on a command line,
    # where ps and /proc/<pid>/cmdline would show it, nor in the worker's environment.
    token_file="$etc_dir/worker.token"
    rm -f "$etc_dir/worker.env"
    if [ -n "$token" ]; then
        (umask 077 && printf '%s\n' "$token" > "$token_file.tmp")
        mv "$token_file.tmp" "$token_file"
    fi

    init="${{PERDURE_INIT:-}}"
    if [ -z "$init" ]; then
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            init=systemd
        else
            init=nohup
        fi
    fi

    if [ "$init" = systemd ]; then
        arguments={unit_arguments}
        if [ -n "$token" ]; then arguments="$arguments --token-file $token_file"; fi
        mkdir -p "$unit_dir"
        {{
            printf '%s\n' '[Unit]' 'Description=Perdure worker' 'Wants=network-online.target' \
                'After=network-online.target' '' '[Service]' 'Type=simple'
            printf 'ExecStart=%s/bin/perdure %s\n' "$prefix" "$arguments"
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
        set -- worker --server "$server" --group "$group"
        if [ -n "$token" ]; then set -- "$@" --token-file "$token_file"; fi
        nohup "$prefix/bin/perdure" "$@" >> "$log_dir/worker.log" 2>&1 < /dev/null &
        printf '%s\n' "$!" > "$etc_dir/worker.pid"
        say "worker started without systemd (pid $!); log: $log_dir/worker.log"
    fi
}}

main "$@"
"""

"""What a ``--tcp-close`` restore leaves behind: CRIU's connection locks in iptables, and their removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdure.spot.criutcplocks import lock_rules, remove_tcp_locks

# ---- what --tcp-close restores leave behind -----------------------------------------------------------

LOCK = "-m mark ! --mark 0xc114 -j DROP"
IPTABLES_S = f"""\
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-N NETAVARK_FORWARD
-A INPUT -s 10.0.0.5/32 -d 10.0.0.9/32 -p tcp -m tcp --sport 5432 --dport 41000 {LOCK}
-A OUTPUT -s 10.0.0.9/32 -d 10.0.0.5/32 -p tcp -m tcp --sport 41000 --dport 5432 {LOCK}
-A INPUT -s 10.0.0.7/32 -p tcp -j DROP
-A FORWARD -m comment --comment "netavark firewall plugin rules" -j NETAVARK_FORWARD
"""


def test_only_crius_connection_locks_are_picked_for_removal() -> None:
    rules = lock_rules(IPTABLES_S)
    assert len(rules) == 2 and all("0xc114" in r and r.endswith("-j DROP") for r in rules)


def test_the_locks_are_removed_with_iptables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    listing = tmp_path / "listing"
    listing.write_text(IPTABLES_S)
    (bindir / "iptables").write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncase "$*" in *-S*) /bin/cat {listing};; esac\n'
    )
    (bindir / "iptables").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    assert remove_tcp_locks() == 2
    made = (tmp_path / "calls").read_text().splitlines()
    assert made[0] == "-w -t filter -S"
    assert made[1].startswith("-w -t filter -D INPUT -s 10.0.0.5/32") and made[1].endswith("0xc114 -j DROP")
    assert made[2].startswith("-w -t filter -D OUTPUT -s 10.0.0.9/32")

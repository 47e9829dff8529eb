"""ssh-audit, the public SSH configuration auditor, finds nothing to fail in pairpod's defaults.

It connects to a real ``pairpod serve`` with the default algorithm lists and
grades every key exchange, host key, cipher and MAC offered (and runs its
own probes: group-exchange modulus sizes, connection rate). Any line marked
``[fail]`` fails the test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.support.gateway import GatewayProcess

_FAIL = re.compile(r"\[fail\]")
# "(kex) name -- [fail] ..." or a continuation line under a named algorithm.
_ALGORITHM_LINE = re.compile(r"^\((\w+)\) (\S+)")


def ssh_audit(gateway: GatewayProcess) -> str:
    """ssh-audit's report on ``gateway`` (no colours), as text."""
    result = subprocess.run(
        [sys.executable, "-m", "ssh_audit", "-n", "-p", str(gateway.port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = result.stdout + result.stderr
    # It prints algorithm sections only once it has the server's KEXINIT.
    assert "# key exchange algorithms" in report, report
    return report


def failed_items(report: str) -> list[str]:
    """The algorithms (or checks) ssh-audit marked ``[fail]``, named by their section."""
    failed = []
    current = "(general)"
    for line in report.splitlines():
        named = _ALGORITHM_LINE.match(line)
        if named:
            current = f"{named.group(1)} {named.group(2)}"
        if _FAIL.search(line):
            failed.append(f"{current}: {line.strip()}")
    return failed


def test_default_configuration_has_no_ssh_audit_failures(serve: ServeGateway) -> None:
    gateway = serve()
    report = ssh_audit(gateway)
    print(report)
    assert failed_items(report) == []
    # What made earlier versions fail is not offered any more.
    for gone in (
        "diffie-hellman-group14-sha1",
        "mlkem768nistp256",
        "mlkem1024nistp384",
        "diffie-hellman-group-exchange",
        "hmac-sha1",
        "ecdh-sha2-nistp",
    ):
        assert gone not in report, gone
    assert "mlkem768x25519-sha256" in report  # post-quantum hybrid still offered
    assert_probe_login_prompt(gateway)


def test_rsa_host_key_is_offered_with_sha2_signatures_only(serve: ServeGateway, tmp_path: Path) -> None:
    rsa_key = tmp_path / "rsa_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", str(rsa_key)], check=True)
    gateway = serve({"host_keys": [str(rsa_key)]})
    report = ssh_audit(gateway)
    assert failed_items(report) == []
    host_key_algorithms = re.findall(r"^\(key\) (\S+)", report, re.MULTILINE)
    assert set(host_key_algorithms) == {"rsa-sha2-512", "rsa-sha2-256"}, report


def test_failure_parser_names_the_failing_algorithm() -> None:
    # The parser itself, on a line in ssh-audit's format: a report with a
    # failure must not read as clean.
    report = (
        "(kex) diffie-hellman-group14-sha1            -- [fail] using broken SHA-1 hash\n"
        "                                             `- [info] available since OpenSSH 3.9\n"
        "(mac) hmac-sha2-256-etm@openssh.com          -- [info] available since OpenSSH 6.2\n"
    )
    assert failed_items(report) == [
        "kex diffie-hellman-group14-sha1: (kex) diffie-hellman-group14-sha1"
        "            -- [fail] using broken SHA-1 hash"
    ]

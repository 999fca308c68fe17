"""Nobody locks anybody out (CONTRACT.md, Robustness): failures for one username or client never
refuse another's right password or secret, also from one shared address (a NAT, a proxy); the
shipped compose deployment believes X-Forwarded-For from its own nginx alone; and a proxy that is
not trusted is pointed out in the log."""

from __future__ import annotations

import ipaddress
from typing import Any

import aiohttp

from tessera.server.settings import load_settings
from tests.helpers import KEK, PASSWORD, SECRET, basic, post_token
from tests.processes import free_port, wait_until_ready
from tests.test_deploy_files import compose_config  # noqa: F401  (the fixture: compose's own reading of the file)

# Past the per-address cap the server had by default (100 failures from one address over all names).
MANY = 110
SHARED_ADDRESS = "127.0.0.1"  # every request here comes from the test client on this address


async def test_failures_for_one_username_never_refuse_another_users_right_password_from_the_same_address(client, admin):
    await admin.client("app", grant_types=("password",))
    await admin.user("alice", "alice's own password")
    await admin.user("bob", PASSWORD)
    answers = []
    for n in range(MANY):
        form = {"grant_type": "password", "username": "alice", "password": f"guess-{n}"}
        answers.append((await post_token(client, form, headers=basic("app", SECRET)))[0])
    assert set(answers) == {400, 429}  # alice herself is throttled from this address

    form = {"grant_type": "password", "username": "bob", "password": PASSWORD}
    status, body, _ = await post_token(client, form, headers=basic("app", SECRET))
    assert status == 200, body


async def test_failures_for_other_clients_never_refuse_a_clients_right_secret_from_the_same_address(client, admin):
    await admin.client("svc")
    # Services retrying secrets that were rotated away, or someone spraying client ids: each id
    # fails a few times, together far more than any one of them.
    for n in range(MANY):
        headers = basic(f"stale-{n % 20}", f"an-old-secret-{n}-an-old-secret")
        assert (await post_token(client, {"grant_type": "client_credentials"}, headers=headers))[0] in (401, 429)

    status, body, _ = await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET))
    assert status == 200, body


def test_compose_trusts_only_its_own_proxy_network(compose_config):  # noqa: F811
    (network,) = compose_config["networks"].values()
    (ipam,) = network["ipam"]["config"]
    subnet = ipaddress.ip_network(ipam["subnet"])
    lb = compose_config["services"]["lb"]
    nginx = ipaddress.ip_address(lb["networks"]["default"]["ipv4_address"])
    assert nginx in subnet
    # No other container can be given nginx's address.
    assert nginx not in ipaddress.ip_network(ipam["ip_range"]) and ipam["gateway"] != str(nginx)
    for name in ("tessera-1", "tessera-2"):
        raw = compose_config["services"][name]["environment"]["TESSERA_TRUSTED_PROXIES"]
        trusted = load_settings({"TESSERA_TRUSTED_PROXIES": raw, "TESSERA_KEY_ENCRYPTION_KEY": KEK}).trusted_proxies
        # nginx alone: not the gateway (callers from the host may arrive from it), not the subnet.
        assert trusted == (ipaddress.ip_network(f"{nginx}/32"),), name


async def test_x_forwarded_for_from_an_untrusted_peer_is_warned_about_once(processes, env):
    port = free_port()
    server = processes.serve("tessera", {**env, "TESSERA_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    await wait_until_ready(f"{base}/readyz", server)
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            headers = {**basic("svc", SECRET), "X-Forwarded-For": f"198.51.100.{n + 1}"}
            async with http.post(f"{base}/token", data={"grant_type": "client_credentials"}, headers=headers) as response:
                assert response.status == 401  # no such client; the header changed nothing
    assert server.stop() == 0
    warnings: list[dict[str, Any]] = [line for line in server.log_lines() if line.get("event") == "forwarded_for_ignored"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "warning" and warnings[0]["peer"] == SHARED_ADDRESS
    assert "TESSERA_TRUSTED_PROXIES" in warnings[0]["msg"]

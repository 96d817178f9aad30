"""The deploy agent with several replicas, as real processes behind the balancer: with
PROVISIONER_AGENT_DIR shared, every replica says it serves the one build (/readyz), and
a machine gets the kernel and initramfs of the build its boot script names whichever
replica answers each request, also after a rebuild made another build current.

The build is a stand-in (tests/agent/fake_build.py): what is under test is which build
the replicas find and serve, not the build."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.agent.fake_build import fake_build
from tests.replicas.harness import fleet
from tests.replicas.postgres import need_postgres

KEY_A, KEY_B = "a" * 16, "b" * 16
_FILES = re.compile(r"^(?:kernel|initrd) --name \w+ (\S+)", re.M)


def test_replicas_sharing_an_agent_directory_boot_one_build(tmp_path: Path) -> None:
    bin_dir = need_postgres()
    shared = tmp_path / "shared-agent"
    first = fake_build(shared, KEY_A)
    with fleet(tmp_path, bin_dir, replicas=2, nodes=1, agent_dir=str(shared)) as f:
        assert [httpx.get(f"{r.url}/readyz").json()["agent"] for r in f.replicas] == [KEY_A] * 2
        # An unknown machine: whichever replica renders its script, the agent discovers it.
        script = httpx.get(f"{f.balancer.url}/boot/ipxe", params={"mac": "52:54:00:aa:00:01"})
        urls = _FILES.findall(script.text)
        assert [url.split("?")[0] for url in urls] == [
            f"{f.balancer.url}/boot/agent/{KEY_A}/vmlinuz",
            f"{f.balancer.url}/boot/agent/{KEY_A}/initrd.img",
        ], script.text
        # Each file from each replica, through the balancer (each request to the next).
        for url, path in [*zip(urls, (first.kernel, first.initrd), strict=True)] * 2:
            fetched = httpx.get(url)
            assert (fetched.status_code, fetched.content) == (200, path.read_bytes()), url
        # Rebuilt meanwhile (a new kernel): both replicas boot the new build from now on,
        # and the machine told to boot the earlier one still gets it from either.
        fake_build(shared, KEY_B)
        assert [httpx.get(f"{r.url}/readyz").json()["agent"] for r in f.replicas] == [KEY_B] * 2
        for replica in f.replicas:
            path = urls[1].replace(f.balancer.url, replica.url)
            assert httpx.get(path).content == first.initrd.read_bytes()

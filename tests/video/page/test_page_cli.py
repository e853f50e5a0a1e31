"""`mesh call page [CONTACT]` and `mesh call CONTACT --page` against a `mesh up` node."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.video.procs import MESH, NodeUp, run_mesh

pytestmark = pytest.mark.timeout(120)


def _get(url: str) -> int:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_mesh_call_page_prints_the_tokened_url_and_call_page_opens_it(tmp_path: Path) -> None:
    node = NodeUp(tmp_path / "a")
    try:
        shown = node.status["services"]["video"]["page"]
        assert shown.startswith("http://127.0.0.1:") and "token" not in shown
        done = run_mesh(node.data, "call", "page")
        assert done.returncode == 0, done.stderr
        url = done.stdout.strip()
        assert url.startswith(shown + "?token=") and len(url) > len(shown) + 40
        assert _get(shown) == 403  # the URL without its token
        assert _get(url) == 303  # sets the cookie, drops the token
        # With a contact the URL calls it when opened.
        key = "ab" * 32
        done = run_mesh(node.data, "call", "page", key)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith(f"&call={key}")
        bad = run_mesh(node.data, "call", "page", "nobody-by-that-name")
        assert bad.returncode != 0 and "nobody-by-that-name" in bad.stderr
        # --page opens it with the default browser ($BROWSER here).
        seen = tmp_path / "opened.txt"
        opener = tmp_path / "browser.sh"
        opener.write_text(f'#!/bin/sh\necho "$1" > {seen}\n')
        opener.chmod(0o755)
        env = {**os.environ, "BROWSER": f"{opener} %s"}
        opened = subprocess.run(
            [*MESH, "--data-dir", str(node.data), "call", key, "--page"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert opened.returncode == 0, opened.stderr
        assert seen.read_text().strip().endswith(f"&call={key}")
        assert json.loads(run_mesh(node.data, "call", "page", "--json").stdout)["url"]
    finally:
        node.stop()

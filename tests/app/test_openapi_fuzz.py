"""schemathesis against /openapi.json of a live server: no 5xx and no undocumented status, content
type or body anywhere in the API. Path parameters are pinned to a real model so that generated
bodies reach the model code instead of stopping at 404."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_server_error(server, tmp_path) -> None:
    st = Path(sys.executable).with_name("st")  # the CLI installed beside this interpreter
    assert st.is_file(), "schemathesis is missing: the test command installs it"
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.name" = "mlp-digits"\n"path.version" = "1"\n')
    command = [
        str(st),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout

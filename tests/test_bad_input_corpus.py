"""Every malformed file in tests/corpus/ is refused by the real CLI: exit 2, no traceback, file, line and field named.

The commands are the ones an operator runs (`fleet rollout run --dry-run`, `fleet experiment run`,
`hil up`); each validates everything before it touches anything. To show that, FLEET_REDIS_URL
points at a listener that counts connections: a bad file must be refused before any connection
to Redis is made, and `hil up` must not create its state directory.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_zygote import CliZygote

CORPUS = Path(__file__).parent / "corpus"
BIN = Path(sys.executable).parent
# the corpus is checked in, and git keeps no 0600: its secrets files are accepted knowingly (tests/test_secrets_mode.py
# shows the refusal)
FLEET = [str(BIN / "fleet"), "--insecure-secrets"]
INDEX = yaml.safe_load((CORPUS / "index.yml").read_text())


class CountingListener:
    """A TCP port standing in for Redis: accepts, counts and closes every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def command(case: dict, tmp: Path) -> tuple[list[str], str]:
    """The CLI command that validates this case, and the path its error must name."""
    f = case["file"]
    kind = case["kind"]
    if kind == "inventory":
        return [*FLEET, "rollout", "run", "base/rollout.yml", "--inventory", f, "--dry-run"], f
    if kind == "secrets":
        inv = tmp / f"inventory-{Path(f).stem}.yml"
        secrets = str((CORPUS / f).resolve())
        inv.write_text((CORPUS / "base" / "inventory.yml").read_text()
                       .replace("secrets_file: ../base/secrets.yml", f"secrets_file: {secrets}"))
        return [*FLEET, "rollout", "run", "base/rollout.yml", "--inventory", str(inv), "--dry-run"], secrets
    if kind == "rollout":
        return [*FLEET, "rollout", "run", f, "--inventory", "base/inventory.yml", "--dry-run"], f
    if kind == "experiment":
        return [*FLEET, "experiment", "run", f, "--inventory", "base/inventory.yml",
                "--report-dir", str(tmp / "reports"), "--task-timeout", "1"], f
    if kind == "lab":
        return [str(BIN / "hil"), "up", f, "--state-dir", str(tmp / f"state-{Path(f).stem}"), "--ready-timeout", "5"], f
    raise AssertionError(f"unknown kind {kind}")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every case once and keeps what each printed. Each command is a process of its own, forked from one
    that imported the CLIs once (tests/cli_zygote.py): about 200 interpreter start-ups cost the suite minutes
    under load, and a forked child runs the console script's own `main()` with its own argv, output and exit."""
    tmp = tmp_path_factory.mktemp("corpus")
    fake_redis = CountingListener()
    env = dict(os.environ, FLEET_REDIS_URL=f"redis://127.0.0.1:{fake_redis.port}/0", COLUMNS="250", NO_COLOR="1")
    env.pop("FLEET_INVENTORY", None)
    zygote = CliZygote(CORPUS, env)

    def run(case: dict) -> tuple[str, dict]:
        argv, names = command(case, tmp)
        before = fake_redis.connections
        rc, out = zygote.run(argv, timeout=60)
        time.sleep(0.02)    # a connection the child made, still to be accepted and counted by the listener's thread
        return case["file"], {"rc": rc, "out": out, "names": names, "argv": argv,
                              "redis_touched": fake_redis.connections - before}

    try:
        yield dict(run(case) for case in INDEX), fake_redis, tmp
    finally:
        zygote.close()
        fake_redis.close()


def test_corpus_is_large_enough():
    kinds = {c["kind"] for c in INDEX}
    assert len(INDEX) >= 100 and kinds == {"inventory", "secrets", "rollout", "experiment", "lab"}, (len(INDEX), kinds)
    for c in INDEX:
        assert (CORPUS / c["file"]).is_file(), c["file"]


@pytest.mark.parametrize("case", INDEX, ids=[Path(c["file"]).stem for c in INDEX])
@pytest.mark.slow
@pytest.mark.timeout(900)   # the first one runs the whole corpus (about 200 CLI processes) in its fixture
def test_bad_input_is_refused_with_file_line_and_field(case, results):
    res = results[0][case["file"]]
    out = res["out"]
    context = f"{' '.join(res['argv'])}\n--- exit {res['rc']}, output:\n{out}"
    assert "Traceback" not in out, context
    assert res["rc"] == 2, context
    where = f"{res['names']}:{case['line']}" if case["line"] else res["names"]
    expected = f"{where}: {case['field']}" if case["field"] else f"{where}:"
    assert expected in out, f"expected {expected!r} in the message\n{context}"
    assert case["contains"] in out, f"expected {case['contains']!r} in the message\n{context}"
    # refused before anything was touched
    assert res["redis_touched"] == 0, f"a connection to Redis was made before the input was refused\n{context}"
    if case["kind"] == "lab":
        state = results[2] / f"state-{Path(case['file']).stem}"
        assert not state.exists(), f"hil up created {state} before refusing the lab file\n{context}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_secret_values_never_appear_in_secrets_file_errors(results):
    for case in INDEX:
        if case["kind"] == "secrets":
            out = results[0][case["file"]]["out"]
            for value in ("corpus-admin", "corpus-boot", "corpus-sip", "hunter2-not-shown", "0123"):
                assert value not in out, (case["file"], out)


def test_dev_zero_inventory_is_refused(tmp_path):
    proc = subprocess.run([*FLEET, "rollout", "run", "base/rollout.yml", "--inventory", "/dev/zero", "--dry-run"],
                          cwd=CORPUS, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, FLEET_REDIS_URL="redis://127.0.0.1:9/0", COLUMNS="250"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out and "/dev/zero" in out and "larger than" in out, out


def test_directory_as_inventory_is_refused(tmp_path):
    proc = subprocess.run([*FLEET, "rollout", "run", "base/rollout.yml", "--inventory", str(tmp_path), "--dry-run"],
                          cwd=CORPUS, capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="250"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out


def test_markup_in_values_is_printed_not_interpreted(tmp_path):
    """A parameter value or name holding Rich markup (`[/x]`) is shown as text in the dry run's diff."""
    pb = tmp_path / "pb.yml"
    pb.write_text((CORPUS / "base" / "rollout.yml").read_text().replace(
        "  reg.1.server.1.expires: 120\n", '  reg.1.server.1.expires: 120\n  reg.1.displayName: "[/x] [bold]x[/bold] [/]"\n'))
    proc = subprocess.run([*FLEET, "rollout", "run", str(pb), "--inventory", "base/inventory.yml", "--dry-run"],
                          cwd=CORPUS, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, FLEET_REDIS_URL="redis://127.0.0.1:9/0", COLUMNS="250"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "reg.1.displayName: None -> [/x] [bold]x[/bold] [/]" in out, out


def test_unexpected_exception_is_one_line_and_not_exit_1(tmp_path):
    """A bug (here: a drill path that is a directory, read later) ends with the internal-error code, not 1."""
    from fleet import cli
    from fleet.cli import common

    assert (common.EXIT_FAILED, common.EXIT_INPUT, common.EXIT_INFRA, common.EXIT_INTERNAL,
            common.EXIT_INTERRUPTED) == (1, 2, 3, 4, 130)
    from click.testing import CliRunner

    @cli.main.command("boom-for-test", hidden=True)
    def boom() -> None:
        raise RuntimeError("something broke at http://user:hunter2@example.invalid/x")

    try:
        result = CliRunner().invoke(cli.main, ["boom-for-test"])
    finally:
        cli.main.commands.pop("boom-for-test", None)
    assert result.exit_code == 4, result.output
    assert "internal error: RuntimeError" in result.output and "hunter2" not in result.output, result.output
    assert "Traceback" not in result.output


def test_interrupt_exits_130():
    from click.testing import CliRunner

    from fleet import cli

    @cli.main.command("interrupt-for-test", hidden=True)
    def interrupt() -> None:
        raise KeyboardInterrupt

    try:
        result = CliRunner().invoke(cli.main, ["interrupt-for-test"])
    finally:
        cli.main.commands.pop("interrupt-for-test", None)
    assert result.exit_code == 130, result.output


def test_hil_up_missing_lab_file_exits_2(tmp_path):
    proc = subprocess.run([str(BIN / "hil"), "up", str(tmp_path / "nope.yml"), "--state-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nope.yml" in proc.stderr, proc.stderr


def test_alias_bomb_is_rejected_before_building_anything(tmp_path):
    """The 1 KB bomb of bench/alias_bomb.py: refused by the loader with the line of the first node over budget."""
    from soundpoint.yamlfile import FileError, read

    sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
    try:
        from alias_bomb import bomb_document
    finally:
        sys.path.pop(0)
    path = tmp_path / "bomb.yml"
    path.write_text(bomb_document())
    assert len(path.read_bytes()) <= 1024
    with pytest.raises(FileError, match="alias") as exc:
        read(path)
    assert exc.value.line is not None


def test_legitimate_anchors_and_merge_keys_still_work(tmp_path):
    from soundpoint.yamlfile import read

    path = tmp_path / "ok.yml"
    phones = "\n".join(f"  - {{<<: *d, mac: '{i:012x}'}}" for i in range(3000))
    path.write_text(f"defaults: &d {{model: VVX 410, credentials: admin, params: {{a: 1, b: 2, c: 3}}}}\nphones:\n{phones}\n")
    data, _ = read(path)
    assert len(data["phones"]) == 3000 and data["phones"][2999]["model"] == "VVX 410"


def test_duplicate_mac_check_is_linear(tmp_path):
    """50,000 phones and a duplicate at the end (the check was quadratic: 44 s): found and named. One load, not
    two: the error naming phones[50000] also shows that none of the 50,000 before it was taken for a duplicate."""
    from fleet.config import inventory
    from soundpoint.yamlfile import FileError

    phones = "\n".join(f"      - {{mac: '{i:012x}', model: VVX 410, address: 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}, "
                       f"credentials: admin}}" for i in range(1, 50001))
    head = "name: big\nsites:\n  - name: s\n    gateway: 10.0.0.1\n    boot_server: {url: 'http://10.0.0.2/'}\n    phones:\n"
    path = tmp_path / "big.yml"
    path.write_text(head + phones + "\n      - {mac: '00000000c350', model: VVX 410, address: 10.9.9.9, credentials: admin}\n")
    with pytest.raises(FileError, match="listed twice") as exc:
        inventory.load(path)
    assert exc.value.line == 50007 and exc.value.field == "sites[0].phones[50000].mac", str(exc.value)


# ------------------------------------------------------------------ beyond the corpus: random damage
def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                       max_leaves=8)


def _load_and_check(kind: str, path: Path) -> None:
    """What the CLI does with a file of this kind before touching anything (in-process)."""
    from fleet.config import inventory
    from fleet.experiment import playbook
    from fleet.rollout import playbook as rollout_playbook
    from fleet.rollout import plan as rollout_plan
    from hil import labfile

    base_inv = CORPUS / "base" / "inventory.yml"
    if kind == "inventory":
        inv = inventory.load(path, keep_source=True)
        inventory.check_secrets(inv)
        rollout_plan.check_against(rollout_playbook.load(CORPUS / "base" / "rollout.yml"), inv, "base/rollout.yml")
    elif kind == "rollout":
        pb = rollout_playbook.load(path)
        rollout_plan.check_against(pb, inventory.load(base_inv), path)
    elif kind == "experiment":
        pb = playbook.load(path)
        playbook.check_against(pb, inventory.load(base_inv), path)
    elif kind == "lab":
        labfile.load(path)
    elif kind == "secrets":
        text = base_inv.read_text().replace("secrets_file: ../base/secrets.yml", f"secrets_file: {path}")
        inv_path = path.with_name("inv.yml")
        inv_path.write_text(text)
        inv = inventory.load(inv_path, keep_source=True)
        inventory.check_secrets(inv)


@pytest.mark.parametrize("kind", ["inventory", "secrets", "rollout", "experiment", "lab"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_gives_a_file_error_or_a_valid_file(kind, data, tmp_path, monkeypatch):
    from soundpoint.yamlfile import FileError

    monkeypatch.chdir(CORPUS)       # the base rollout's drill path is relative to the working directory
    doc = yaml.safe_load((CORPUS / "base" / f"{kind}.yml").read_text())
    where = data.draw(st.sampled_from(list(_paths(doc))[1:]))
    value = data.draw(_VALUES)
    parent = doc
    for part in where[:-1]:
        parent = parent[part]
    parent[where[-1]] = value
    path = tmp_path / f"{kind}.yml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        _load_and_check(kind, path)
    except FileError as exc:
        assert exc.path and str(exc).startswith(exc.path), str(exc)

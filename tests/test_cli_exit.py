"""`fleet` and `hil` share one exit-code group (soundpoint.cli_exit): each way a command ends, for both tools,
gives the tool's own exit code and one line. Unit tests with click's runner, nothing started."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from fleet.cli.common import FleetCli
from hil.cli import _Cli as HilCli
from soundpoint.yamlfile import FileError


def _ending(cls, error: BaseException, monkeypatch, debug: str | None = None):
    @click.group(cls=cls)
    def tool() -> None:
        pass

    @tool.command()
    def go() -> None:
        raise error

    if debug:
        monkeypatch.setenv(debug, "1")
    return CliRunner().invoke(tool, ["go"])


@pytest.mark.parametrize("cls", [FleetCli, HilCli])
def test_bad_input_exits_2_naming_the_file(cls, monkeypatch):
    result = _ending(cls, FileError("inv.yml", 3, "sites[0].name", "required"), monkeypatch)
    assert result.exit_code == 2 and "inv.yml:3: sites[0].name: required" in result.output, result.output


@pytest.mark.parametrize("cls", [FleetCli, HilCli])
def test_ctrl_c_exits_130(cls, monkeypatch):
    result = _ending(cls, KeyboardInterrupt(), monkeypatch)
    assert result.exit_code == 130 and "interrupted" in result.output, result.output


@pytest.mark.parametrize("cls", [FleetCli, HilCli])
def test_a_network_error_is_a_runtime_error_on_one_line(cls, monkeypatch):
    result = _ending(cls, ConnectionRefusedError("refused\n  by peer"), monkeypatch)
    assert result.exit_code == 3 and "ConnectionRefusedError: refused by peer" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("cls, debug", [(FleetCli, "FLEET_DEBUG"), (HilCli, "HIL_DEBUG")])
def test_a_bug_exits_4_and_the_debug_variable_shows_it(cls, debug, monkeypatch):
    result = _ending(cls, RuntimeError("bug"), monkeypatch)
    assert result.exit_code == 4 and "internal error: RuntimeError: bug" in result.output, result.output
    assert f"{debug}=1" in result.output
    raised = _ending(cls, RuntimeError("bug"), monkeypatch, debug=debug)
    assert isinstance(raised.exception, RuntimeError)


def test_fleet_error_lines_hide_url_passwords_before_cutting():
    """A password with a slash is still hidden, and the length cut never leaves the start of one."""
    from fleet.cli.common import brief as _one_line

    assert _one_line("cannot reach redis://:pa/ss@h:6379/0") == "cannot reach redis://***@h:6379/0"
    cut = _one_line("x" * 290 + " redis://user:secretpassword@host/0")
    assert len(cut) == 300 and "secr" not in cut and "user" not in cut, cut

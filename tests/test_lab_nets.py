"""Unit: the labs the suite starts hold disjoint loopback addresses, so test modules may run side by side."""
from __future__ import annotations

import itertools

import pytest

from conftest import LAB_NETS, lab_octets, start_lab


def test_no_two_registered_labs_share_a_loopback_address():
    clashes = []
    for (a, (sites_a, who_a)), (b, (sites_b, who_b)) in itertools.combinations(sorted(LAB_NETS.items()), 2):
        shared = lab_octets(a, sites_a) & lab_octets(b, sites_b)
        if shared:
            clashes.append(f"net {a} ({who_a}) and net {b} ({who_b}) both hold 127.{sorted(shared)[0]}.x.x")
    assert not clashes, clashes
    assert all(max(lab_octets(n, s)) <= 254 for n, (s, _) in LAB_NETS.items())


def test_octets_follow_the_labs_address_plan():
    assert lab_octets(21, 1) == {21, 61, 71, 121}
    assert lab_octets(31, 2) == {31, 32, 71, 81, 82, 131, 132}     # net 21's public relay is net 31's WAN side
    assert lab_octets(21, 1) & lab_octets(31, 2) == {71}


@pytest.mark.parametrize("net,sites", [(11, 1), (2, 2)])
def test_an_unregistered_lab_is_refused_before_it_starts(tmp_path, net, sites):
    spec = {"name": "x", "net": net, "sites": [{"name": f"s{k}"} for k in range(sites)]}
    with pytest.raises(AssertionError, match=f"lab net {net} with {sites} site"):
        start_lab(tmp_path, spec)
    assert not (tmp_path / "lab.yml").exists()


def test_lab_file_takes_nets_whose_address_plan_fits(tmp_path):
    """Userspace labs take nets up to 150 while phones (127.(net+100+k)) stay below 127.255; netns labs 1-60."""
    import yaml

    from conftest import lab_spec
    from hil import labfile
    from soundpoint.yamlfile import FileError

    def load(net: int, backend: str = "userspace") -> labfile.LabFile:
        spec = dict(lab_spec("n", 1, phones=1), net=net, backend=backend)
        path = tmp_path / "lab.yml"
        path.write_text(yaml.safe_dump(spec))
        return labfile.load(path)

    assert load(96).net == 96 and load(150).net == 150
    assert load(60, "netns").net == 60
    with pytest.raises(FileError, match=r"lab.yml:\d+: net: backend netns: net 61 is above 60"):
        load(61, "netns")
    with pytest.raises(FileError, match="net"):
        load(151)

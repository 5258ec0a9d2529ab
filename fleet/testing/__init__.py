"""fleet's pytest plugin: users' own hardware-in-the-loop tests against a site (or the virtual lab), in pytest.

`plugin.py` is the entry point pytest loads (`pytest11` in pyproject.toml) and stays inert unless a test run
gives `--fleet-inventory` or `--fleet-lab`; `site.py` is the handle the fixtures give tests, `wan.py` the WAN
outage context manager, `evidence.py` the in-process evidence that says which server each phone works with,
`lab.py` a lab started with `hil up` for the session. README, "Writing your own HIL tests with pytest".
"""

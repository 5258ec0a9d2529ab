# Two entry points: `make demo` (the main job) and `make test`. Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := redis-server iproute2 openssh-client
# installed without Debian's recommends: prometheus (promtool checks the shipped alert rules, a real Prometheus
# scrapes a collector in the tests) would pull in node-exporter, smartmontools and more
APT_BARE := prometheus
# optional: the interop, namespace-lab (real router: sshd, snmpd, iptables, tc, tcpdump, Kamailio), browser and
# compose-file checks skip when these cannot be installed
APT_OPTIONAL := kamailio chromium docker-compose openssh-server snmpd snmp tcpdump nftables iptables

.PHONY: deps deps-optional venv demo demo-wire demo-syslog demo-hep test test-fast bench clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	bare=""; for p in $(APT_BARE); do dpkg -s $$p >/dev/null 2>&1 || bare="$$bare $$p"; done; \
	if [ -n "$$missing$$bare" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing$$bare"; apt-get update -qq \
	    && { [ -z "$$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    && { [ -z "$$bare" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$bare >/dev/null; }; \
	  else echo "missing Debian packages:$$missing$$bare (run as root, or: sudo apt-get install$$missing$$bare)"; fi; fi

deps-optional:
	@missing=""; for p in $(APT_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && [ -z "$$FLEET_SKIP_OPTIONAL" ]; then \
	  echo "installing optional Debian packages:$$missing"; \
	  apt-get update -qq || true; \
	  for p in $$missing; do DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$p >/dev/null \
	    || echo "could not install $$p: the tests that need it will be skipped"; done; fi

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: deps $(STAMP)

# on the evidence a real site has: SIP captured on the router and the phones' telephone notification events, no
# registration log line (hil/labs/demo-wire.yml, hil.demo's default); demo-wire is the same, by its older name
demo: deps $(STAMP)
	$(PY) -m hil.demo --lab hil/labs/demo-wire.yml

demo-wire: demo

# the same demo with a Kamailio gateway's HEP as the only per-server source (needs kamailio)
demo-hep: deps $(STAMP)
	$(PY) -m hil.demo --lab hil/labs/demo-hep.yml

# the same demo with the lab's syslog registration line as well (a line of ours: no real phone sends it)
demo-syslog: deps $(STAMP)
	$(PY) -m hil.demo --lab hil/labs/one-site.yml

test: deps deps-optional $(STAMP)
	$(PY) -m pytest -q -ra --durations=25 -n 4 --dist loadfile --no-loadscope-reorder

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow and not lab"

bench: venv
	$(PY) -m pip install -q -e '.[test,bench]'
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache

# GNU make.  `make test` installs what it needs (a virtualenv and, as root
# on Debian/Ubuntu, mariadb-server) and runs the test suite.

PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed

.PHONY: all test mariadb browser nginx wrk run clean venv

all: test

venv: $(VENV_STAMP)

# pip install -e . puts the kv command (pyproject.toml) in $(VENV)/bin.
$(VENV_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -q -r requirements-dev.txt \
		&& $(VENV)/bin/pip install -q -e .
	touch $@

# The tests start private mariadbd servers of their own; they only need the
# binaries (mariadbd and mariadb-install-db), not a running system service.
mariadb:
	@if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; then \
		exit 0; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing mariadb-server with apt-get"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq mariadb-server >/dev/null; \
	else \
		echo "MariaDB server not found: install MariaDB server 10.6+ (mariadbd and mariadb-install-db) and run make again" >&2; \
		exit 1; \
	fi

# Tools some tests need, installed as root with apt-get when missing; the
# tests that need one are skipped without it.  $(1): the command, $(2): the
# Debian package.
define optional_tool
	@if command -v $(1) >/dev/null 2>&1 || [ -x /usr/sbin/$(1) ]; then \
		exit 0; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing $(2) with apt-get"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq $(2) >/dev/null \
			|| echo "$(2) could not be installed: the tests that need $(1) will be skipped" >&2; \
	else \
		echo "$(1) not found: the tests that need it will be skipped (Debian: apt-get install $(2))" >&2; \
	fi
endef

# test_access opens an attacker's page in headless Chromium.
browser:
	$(call optional_tool,chromium,chromium)

# test_deploy runs deploy/nginx.conf.
nginx:
	$(call optional_tool,nginx,nginx-light)

# test_bench runs the benchmark's command for a second (it drives wrk).
wrk:
	$(call optional_tool,wrk,wrk)

test: mariadb browser nginx wrk $(VENV_STAMP)
	WEBPY_ENV=test $(VENV)/bin/nosetests -v --with-xunit --xunit-file=.test-results.xml test/

# As root, serve.py needs RUN_AS (the user to drop to); `make run` keeps root
# unless told otherwise, for a development server on loopback.
run: $(VENV_STAMP)
	@if [ "$$(id -u)" = 0 ] && [ -z "$$RUN_AS" ]; then \
		echo "make run: running as root (RUN_AS=user make run drops to that user)"; fi
	RUN_AS=$${RUN_AS:-$$(id -un)} $(VENV)/bin/python serve.py

clean:
	rm -rf $(VENV) data/ .test-results.xml

# The benchmark (bench/run.py, issue 6): private mariadbd servers, the store
# under Granian as `make run` serves it, wrk, a web.py hello world and etcd.
# Writes bench/results/.  Arguments: make bench BENCH_ARGS='--quick'
# (or --only 'C-*', --scaling, --profile; see bench/README.md).
.PHONY: bench bench-scale
bench: mariadb $(VENV_STAMP)
	@for tool in wrk etcd; do \
		command -v $$tool >/dev/null 2>&1 && continue; \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "Installing wrk and etcd-server with apt-get"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -qq && apt-get install -y -qq wrk etcd-server >/dev/null || exit 1; \
			break; \
		else \
			echo "$$tool not found: install wrk and etcd (Debian: apt-get install wrk etcd-server)" >&2; \
			exit 1; \
		fi; \
	done
	@[ $(VENV)/.bench-installed -nt requirements-bench.txt ] || \
		{ $(VENV)/bin/pip install -q -r requirements-bench.txt && touch $(VENV)/.bench-installed; }
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# Issue #27: 16 MariaDB partitions, 4 front ends, a partition added under load
# and one killed (bench/scale.py); sync.py's cost as the store grows
# (bench/reconciler.py).  Results in bench/results/scale.* and reconciler.*.
bench-scale: mariadb $(VENV_STAMP)
	$(VENV)/bin/python bench/scale.py $(BENCH_ARGS)
	$(VENV)/bin/python bench/reconciler.py

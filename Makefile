# letskencrypt: `make demo` issues a certificate from a local pebble through all
# eight roles; `make test` runs the whole suite.  Both install what they need.

VENV    := .venv
PYTHON  := $(VENV)/bin/python
# Debian's interpreter: the same one the container images carry.
SYSTEM_PYTHON := /usr/bin/python3
APT_PACKAGES  := pebble python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup system-packages demo test lint proto clean

all: test

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

setup: system-packages $(VENV)/.installed

demo: setup
	./tools/demo.sh

test: setup lint
	$(PYTHON) -m pytest -q

lint:
	$(VENV)/bin/ruff check services tests tools bench

proto: setup
	$(PYTHON) tools/genproto.py

clean:
	rm -rf $(VENV) demo .pytest_cache

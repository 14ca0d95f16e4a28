# letskencrypt: `make demo` issues a certificate from a local pebble through all
# eight roles; `make test` runs the whole suite.  Both install what they need.

VENV    := .venv
PYTHON  := $(VENV)/bin/python
# Debian's interpreter: the same one the container images carry.
SYSTEM_PYTHON := /usr/bin/python3
# libseccomp2: the roles' seccomp filters (through pyseccomp).
# bind9, bind9-dnsutils: an authoritative DNS server (named, tsig-keygen) on
# loopback for the tests of RFC 2136 updates (tests/dnsserver.py), dig, nsupdate.
APT_PACKAGES  := pebble python3-venv libseccomp2 strace mandoc bind9 bind9-dnsutils
# Podman and what it needs on these hosts (runc: crun fails on cgroup v1 hybrid);
# python3-pip installs the images' wheels with the interpreter the images carry.
CONTAINER_PACKAGES := podman runc uidmap slirp4netns fuse-overlayfs python3-pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Every podman call made from here (and from the tests) uses the project's
# settings: runc, and rlimits within this machine's hard limits.
export CONTAINERS_CONF := $(CURDIR)/deploy/podman/containers.conf

.PHONY: all setup system-packages pebble-sid container-tools images demo test lint proto bench clean

all: test

# Install the Debian packages in $(1) that are missing (nothing when all are there).
define apt_install
	@missing=""; for p in $(1); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
endef

system-packages:
	$(call apt_install,$(APT_PACKAGES))

container-tools:
	$(call apt_install,$(CONTAINER_PACKAGES))

# One minimal image per role, localhost/letskencrypt-<role>:latest (or
# $(IMAGE_PREFIX)<role>:latest), on a distroless-style base built offline from
# Debian packages.  Reruns rebuild only what changed (see tools/build_images.py).
# The builder reads the roles' specs, so it runs in the project's venv (of
# Debian's interpreter); it installs the images' wheels with $(SYSTEM_PYTHON).
images: container-tools $(VENV)/.installed
	$(PYTHON) tools/build_images.py $(if $(BASE_IMAGE),--base-image "$(BASE_IMAGE)") \
	    $(if $(IMAGE_PREFIX),--image-prefix "$(IMAGE_PREFIX)")

$(VENV)/.installed: pyproject.toml | system-packages
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

# Debian unstable's pebble (2.10 or later), the tests' second ACME server:
# downloaded once into build/pebble-sid/ through a temporary apt sources list,
# never installed system-wide (see tools/fetch_pebble.py).
pebble-sid: system-packages
	$(SYSTEM_PYTHON) tools/fetch_pebble.py --dest build/pebble-sid

setup: system-packages $(VENV)/.installed pebble-sid

demo: setup
	./tools/demo.sh

test: setup lint images
	$(PYTHON) -m pytest -q

lint:
	$(VENV)/bin/ruff check services tests tools bench

# letskencrypt against uacme, acme-tiny and certbot at 1, 10 and 100 certificates,
# against a local pebble; writes bench/results/ (see bench/README.md).  It installs
# uacme, acme-tiny and (in build/bench-certbot) certbot and matplotlib itself.
# E.g. make bench BENCH_ARGS="--counts 1,10 --runs 1"
bench: setup
	$(PYTHON) -m bench.compare $(BENCH_ARGS)

proto: setup
	$(PYTHON) tools/genproto.py

clean:
	rm -rf $(VENV) demo .pytest_cache build

# Airlock: the two set-up commands are `make demo` and `make test` (see README.md).
# Both install what is missing (idempotent), build, and run.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
MUSL_TARGET := x86_64-unknown-linux-musl
# Tool builds and demo state live under a directory this Makefile owns.
CACHE ?= $(CURDIR)/target/airlock-cache
AIRLOCK := target/debug/airlock
ENFORCER_STATIC := target/$(MUSL_TARGET)/release/airlock-enforcer

.PHONY: demo test deps tools ch-tools build lint unit enforcer-static probe-static fuzz-build schemas bench clean-cache

TOOLS := $(CACHE)/tools
## VMM helpers built from crates.io once, cached under $(TOOLS) (the tests look there).
VHOST_VSOCK := $(TOOLS)/bin/vhost-device-vsock
VIRTIOFSD := $(TOOLS)/bin/virtiofsd
PY := $(TOOLS)/../py
## A Python with grpcio, for the test that drives `airlock serve` from another language,
## and the official MCP SDK (PyPI `mcp`), for the test that drives `airlock mcp` (the
## marker names both, so a venv made before mcp was added gets it too).
PY_CLIENT := $(PY)/.grpcio-mcp-installed
tools: $(VHOST_VSOCK) $(VIRTIOFSD) $(PY_CLIENT)
$(PY_CLIENT): | deps
	python3 -m venv $(PY)
	$(PY)/bin/pip install -q grpcio==1.85.3 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 mcp==2.3.0
	touch $@
$(VHOST_VSOCK): | deps
	$(CARGO) install --locked --root $(TOOLS) vhost-device-vsock
## virtiofsd links libseccomp and libcap-ng (deps installs their -dev packages).
$(VIRTIOFSD): | deps
	$(CARGO) install --locked --root $(TOOLS) virtiofsd

## cloud-hypervisor and ch-remote: no package registry carries them, so the tests take
## the build shared/ holds beside this checkout (its README: version, source, sha256),
## checked against the pinned digests and copied into the cache. CH_DIR overrides.
CH_DIR ?= $(CURDIR)/../shared/tools/cloud-hypervisor
CH_SHA256 := eb76e33ed85f4e768e81b7833907ceb387b5e364fd03c986c05b249a659da625
CH_REMOTE_SHA256 := be24692d0cc8d504afd92e306634ad4aaabbddbe9e1edf9db4445841a921177b
CLOUD_HYPERVISOR := $(TOOLS)/bin/cloud-hypervisor
ch-tools: $(CLOUD_HYPERVISOR)
$(CLOUD_HYPERVISOR):
	@test -x $(CH_DIR)/cloud-hypervisor -a -x $(CH_DIR)/ch-remote || { \
	  echo "cloud-hypervisor not found in $(CH_DIR) (set CH_DIR to a folder with cloud-hypervisor and ch-remote)"; exit 1; }
	@echo "$(CH_SHA256)  $(CH_DIR)/cloud-hypervisor" | sha256sum -c --quiet
	@echo "$(CH_REMOTE_SHA256)  $(CH_DIR)/ch-remote" | sha256sum -c --quiet
	mkdir -p $(TOOLS)/bin
	install -m 0755 $(CH_DIR)/ch-remote $(TOOLS)/bin/ch-remote
	install -m 0755 $(CH_DIR)/cloud-hypervisor $@

## Install what is missing: a Rust toolchain with rustfmt/clippy and the musl target,
## a C compiler, git, busybox-static, QEMU.
deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)"; exit 1; }
	@if command -v rustup >/dev/null; then \
	  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt; \
	  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy; \
	  rustup target list --installed | grep -qx '$(MUSL_TARGET)' || rustup target add $(MUSL_TARGET); \
	fi
	@# Guest images need a static busybox (Debian's busybox-static) and dpkg-deb/apt-get.
	@if [ ! -x /bin/busybox ] || readelf -l /bin/busybox | grep -q 'program interpreter'; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static; \
	  else echo "need busybox-static for guest images: sudo apt-get install --no-install-recommends busybox-static"; exit 1; fi; \
	fi
	@# The demo and the containment suite make scratch git repositories on the host.
	@if ! command -v git >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git; \
	  else echo "need git: sudo apt-get install --no-install-recommends git"; exit 1; fi; \
	fi
	@# Guest images boot under QEMU (the image tests, and later every VM session).
	@if ! command -v qemu-system-x86_64 >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86; \
	  else echo "need QEMU for guest images: sudo apt-get install --no-install-recommends qemu-system-x86"; exit 1; fi; \
	fi
	@# The debian image: mmdebstrap (unshare mode; uidmap for non-root users) and erofs-utils.
	@if ! command -v mmdebstrap >/dev/null || ! command -v mkfs.erofs >/dev/null || ! command -v newuidmap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap uidmap erofs-utils; \
	  else echo "need mmdebstrap, uidmap and erofs-utils for the debian image: sudo apt-get install --no-install-recommends mmdebstrap uidmap erofs-utils"; exit 1; fi; \
	fi
	@# The Python client test needs python3 with venv (grpcio comes from PyPI into the cache).
	@if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv; \
	  else echo "need python3 and python3-venv: sudo apt-get install --no-install-recommends python3 python3-venv"; exit 1; fi; \
	fi
	@# virtiofsd (built by `make tools`) links libseccomp and libcap-ng.
	@if ! pkg-config --exists libseccomp libcap-ng 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pkg-config libseccomp-dev libcap-ng-dev; \
	  else echo "need libseccomp-dev libcap-ng-dev pkg-config to build virtiofsd: sudo apt-get install --no-install-recommends pkg-config libseccomp-dev libcap-ng-dev"; exit 1; fi; \
	fi
	@# The approvals page is tested in a real browser: headless Chromium.
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "need chromium for the approvals page test: sudo apt-get install --no-install-recommends chromium"; exit 1; fi; \
	fi
	@# The egress suite: curl and openssl for its clients and test CA, nft to read back the
	@# rules the enforcer programs over netlink, dig as a real resolver client.
	@if ! command -v curl >/dev/null || ! command -v openssl >/dev/null || ! command -v nft >/dev/null || ! command -v dig >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl openssl nftables dnsutils; \
	  else echo "need curl, openssl, nftables and dnsutils for the egress tests: sudo apt-get install --no-install-recommends curl openssl nftables dnsutils"; exit 1; fi; \
	fi
	@# `airlock ssh-entry` is tested behind the real OpenSSH server (sshd) and client.
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-agent >/dev/null || ! command -v sftp >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server openssh-client; \
	  else echo "need openssh-server and openssh-client for the ssh-entry tests: sudo apt-get install --no-install-recommends openssh-server openssh-client"; exit 1; fi; \
	fi
	@# Custom images: the README's worked example builds an OCI image with umoci; skopeo
	@# turns it into the archives other tools write (oci-archive, docker save).
	@# xz-utils decodes xz-compressed sources as a stream under a memory limit.
	@if ! command -v umoci >/dev/null || ! command -v skopeo >/dev/null || ! command -v xz >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends umoci skopeo xz-utils; \
	  else echo "need umoci, skopeo and xz-utils for custom images and their tests: sudo apt-get install --no-install-recommends umoci skopeo xz-utils"; exit 1; fi; \
	fi
	@if ! command -v cc >/dev/null || ! command -v c++ >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential; \
	  else echo "need a C/C++ compiler: sudo apt-get install --no-install-recommends build-essential"; exit 1; fi; \
	fi

build: deps
	$(CARGO) build --workspace --locked

## A statically linked enforcer, as guest images embed it.
enforcer-static: deps
	$(CARGO) build --release --locked --target $(MUSL_TARGET) -p airlock-enforcer
	@if readelf -l $(ENFORCER_STATIC) | grep -q 'program interpreter'; then \
	  echo "$(ENFORCER_STATIC) asks for a dynamic loader; guest images need it static"; exit 1; fi
	@echo "static enforcer: $(ENFORCER_STATIC) ($$(stat -c %s $(ENFORCER_STATIC)) bytes, no program interpreter)"

## The hostile probe, static: the VM containment suite adds it to a debian image.
PROBE_STATIC := target/$(MUSL_TARGET)/release/hostile_probe
probe-static: deps
	$(CARGO) build --release --locked --target $(MUSL_TARGET) -p airlock-tests --bin hostile_probe
	@if readelf -l $(PROBE_STATIC) | grep -q 'program interpreter'; then \
	  echo "$(PROBE_STATIC) asks for a dynamic loader; the guest image adds it as a static binary"; exit 1; fi

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@# The enforcer ships as a static musl build: lint that build too (libc differs).
	$(CARGO) clippy --locked --target x86_64-unknown-linux-musl -p airlock-enforcer --lib --bins -- -D warnings

## Every test binary runs (--no-fail-fast), then one closing line: passed, failed and
## skipped, with each skipped test named (tests/test-summary.sh).
SKIP_LOG := $(CURDIR)/target/test-skips.log
unit: deps
	@mkdir -p target
	@rm -f $(SKIP_LOG)
	@rc=0; AIRLOCK_TEST_SKIPS=$(SKIP_LOG) $(CARGO) test --workspace --locked --no-fail-fast 2>&1 \
	  | tee target/test-output.log || rc=$$?; \
	bash tests/test-summary.sh target/test-output.log $(SKIP_LOG) || rc=1; exit $$rc

## Fuzz targets must keep building (running them: see README).
fuzz-build: deps
	$(CARGO) check --locked --target-dir target/fuzz --manifest-path proto/fuzz/Cargo.toml
	$(CARGO) check --locked --target-dir target/fuzz --manifest-path host-launcher/fuzz/Cargo.toml
	@# A CI clone only needs to know they build; keep its disk for the test binaries.
	@if [ "$(CI)" = true ]; then rm -rf target/fuzz; fi

## Regenerate manifests/schemas from the Rust types.
schemas: build
	$(AIRLOCK) schema --out manifests/schemas

bench: deps enforcer-static tools
	$(CARGO) bench --locked -p airlock-proto --bench manifest
	$(CARGO) bench --locked -p airlock-launcher --bench decide
	$(CARGO) bench --locked -p airlock-enforcer --bench enforcement
	$(CARGO) build --release --locked -p airlock-launcher -p airlock-enforcer
	$(CARGO) bench --locked -p airlock-tests --bench process_run
	$(CARGO) bench --locked -p airlock-tests --bench vm_boot
	$(CARGO) bench --locked -p airlock-tests --bench merge_back
	$(CARGO) bench --locked -p airlock-tests --bench ask_round_trip
	$(CARGO) bench --locked -p airlock-tests --bench egress

test: lint enforcer-static probe-static fuzz-build tools ch-tools unit

demo: build enforcer-static tools
	bash tests/demo.sh "$(AIRLOCK)" "$(ENFORCER_STATIC)" "$(CACHE)"

clean-cache:
	rm -rf $(CACHE)

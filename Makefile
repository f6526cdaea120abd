# lxgate — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help run test lint openapi contract fuzz bench soak image

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.env:
	cp .env.example .env
	@echo "created .env from .env.example (dev mode: a JWT secret is generated in ./data)"

run: .env ## Prepare the host (LXC, QEMU...) and DATA_DIR's path, build and run lxgate on 127.0.0.1:8000 (embedded backend, SQLite in ./data)
	@if [ "$${SKIP_HOST_SETUP:-0}" = 1 ]; then echo "SKIP_HOST_SETUP=1: not preparing the host"; else bash scripts/host-setup.sh && bash scripts/data-dir-setup.sh; fi
	cargo run --release -- serve

test: ## Install and start what the tests need (PostgreSQL, Chromium...), then run every test
	bash scripts/testbed.sh
	source target/testbed.env && bash scripts/check-static.sh
	source target/testbed.env && cargo test --locked --all-targets --no-fail-fast
	@echo '== the README quick start, verbatim, against a fresh clone'
	source target/testbed.env && bash scripts/check-quickstart.sh
	@echo '== the Incus resource suites again, over remote mTLS instead of the unix socket'
	source target/testbed.env && LXGATE_TEST_INCUS_MODE=remote cargo test --locked --test api --no-fail-fast incus_ -- --skip incus_transport --skip incus_cluster
	@echo "== coverage-guided fuzzing of the parsers of outside input, $${FUZZ_SECONDS:-20}s per target"
	FUZZ_SECONDS=$${FUZZ_SECONDS:-20} FUZZ_SEED=$${FUZZ_SEED:-20261130} bash scripts/fuzz.sh
	@echo '== the published contract: schemathesis (all phases, stateful sequences too) on both backends, generated Python and TypeScript clients (fixed seed; `make contract` explores with a random one)'
	source target/testbed.env && CONTRACT_SEED=$${CONTRACT_SEED:-20261130} CONTRACT_DETAILS=1 bash scripts/check-contract.sh

lint: ## rustfmt and clippy, warnings as errors
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

openapi: ## Regenerate the committed openapi.json after an intended API change
	UPDATE_OPENAPI=1 cargo test --lib openapi_json_matches_the_committed_contract

contract: ## Check openapi.json against the server on both backends (schemathesis, all checks, a random seed; Incus: a private incusd in a network namespace) and the Python/TypeScript client generators; `make test` runs it with a fixed seed
	bash scripts/testbed.sh
	source target/testbed.env && bash scripts/check-contract.sh

fuzz: ## Fuzz every parser of outside input (cargo fuzz, libFuzzer) for FUZZ_SECONDS each (default 120); FUZZ_TARGETS picks some
	FUZZ_SECONDS=$${FUZZ_SECONDS:-120} bash scripts/fuzz.sh

bench: ## Load benchmarks (gateway alone, then against the test bed's incusd); results go to BENCHMARKS.md by hand
	bash scripts/bench.sh
	BENCH_SKIP_BUILD=1 bash scripts/bench-incus.sh
	BENCH_SKIP_BUILD=1 bash scripts/bench-embedded.sh

soak: ## Soak both backends in turn (SOAK_SECONDS each, default 300) under steady mixed load: RSS, fds and threads with their slopes, every error counted
	BENCH_ONLY=soak BENCH_OUT=$${BENCH_OUT:-target/bench/soak.md} bash scripts/bench-embedded.sh

image: ## Build a tiny busybox container image (Incus split format) into ./images/
	bash scripts/testbed-embedded.sh
	mkdir -p images
	cp "$${LXGATE_TESTBED_DIR:-/var/tmp/lxgate-testbed}/embedded-image/meta.tar.xz" "$${LXGATE_TESTBED_DIR:-/var/tmp/lxgate-testbed}/embedded-image/rootfs.tar.xz" images/
	@echo "images/meta.tar.xz and images/rootfs.tar.xz are ready for POST /api/v1/images/import"

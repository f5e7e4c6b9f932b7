# cnet developer entry points. Everything runs from the repo's .venv, built by
# scripts/setup.sh with Debian's /usr/bin/python3 (for python3-nftables).

VENV   := .venv
PYTHON := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
RUFF   := $(VENV)/bin/ruff

.PHONY: all setup test lint demo demo-cluster bench clean

all: test

setup:
	scripts/setup.sh

test: setup
	$(PYTEST) -q tests

lint: setup
	$(RUFF) check .

demo: setup
	scripts/demo.sh

demo-cluster: setup
	scripts/demo-cluster.sh

# bench: every bench/*.py that is a script (has a __main__ block; helpers are skipped)
bench: setup
	@set -e; found=0; \
	for f in bench/*.py; do \
		[ -f "$$f" ] || continue; \
		case "$$(basename "$$f")" in _*) continue;; esac; \
		grep -q "__main__" "$$f" || continue; \
		found=1; echo "== $$f"; $(PYTHON) "$$f"; \
	done; \
	[ $$found -eq 1 ] || echo "bench: no bench/*.py scripts yet"

clean:
	rm -rf $(VENV)

# careledger developer entry points. Everything runs from a fresh clone as root on
# Debian 12: `make test` installs what is missing (deploy/bootstrap.sh), then the
# test session starts the local Kafka + ClickHouse stack itself.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Per-test timeout (seconds); the first integration test also pays for starting the stack.
PYTEST_TIMEOUT ?= 300
PYTEST_ARGS ?=

.PHONY: bootstrap test demo lint up down status

bootstrap:
	bash deploy/bootstrap.sh

# the unit tests beside the integration tests (deploy/test.sh says why and how)
test: bootstrap
	PYTEST_TIMEOUT=$(PYTEST_TIMEOUT) PYTEST_ARGS="$(PYTEST_ARGS)" bash deploy/test.sh

demo: bootstrap
	$(VENV)/bin/careledger demo

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

up: bootstrap
	$(VENV)/bin/careledger up

down:
	$(VENV)/bin/careledger down

status:
	$(VENV)/bin/careledger status

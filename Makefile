# The two commands a newcomer needs:
#   make dev    set up everything and start vLLM (CPU) + the gateway in front of it
#   make test   set up everything and run all tests, integration against real vLLM included
SHELL := /bin/bash
.DEFAULT_GOAL := help
DEV_ARGS ?=

.PHONY: help dev test setup setup-venv setup-vllm setup-redis setup-prometheus lint bench openapi

help:
	@echo "make dev   - start a local vLLM (CPU) and the gateway (Ctrl-C stops both)"
	@echo "make test  - run the whole test suite (unit + integration against real vLLM)"

setup-venv:
	@scripts/setup-venv.sh

setup-vllm:
	@scripts/setup-vllm-env.sh

setup-redis:
	@scripts/setup-redis.sh

setup-prometheus:
	@scripts/setup-prometheus.sh

setup: setup-venv setup-vllm setup-redis setup-prometheus

dev: setup-venv setup-vllm
	.venv/bin/ir-gateway dev $(DEV_ARGS)

test:
	@scripts/test.sh

lint: setup-venv
	.venv/bin/ruff check gateway tests bench deploy

openapi: setup-venv
	.venv/bin/python -m gateway.openapi_doc --write

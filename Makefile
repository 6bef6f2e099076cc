# The two entry points of the README. Both set up a fresh machine first (scripts/setup.sh).
.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/elastic demo
	.venv/bin/elastic serve-demo --model out/demo/model

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q --durations=10

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

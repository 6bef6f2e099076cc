# The two entry points of the README. Both set up a fresh machine first (scripts/setup.sh).
.PHONY: setup demo test test-gpu lint

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/elastic demo
	.venv/bin/elastic serve-demo --model out/demo/model

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q --durations=10
	@if .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then $(MAKE) --no-print-directory test-gpu; fi

# The tests marked gpu, in their own process with compiled Triton (tests/conftest.py sets
# TRITON_INTERPRET=1 only when it is unset). `make test` runs this when torch sees CUDA.
test-gpu:
	TRITON_INTERPRET=0 .venv/bin/python -m pytest -q -m gpu

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

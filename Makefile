# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean protos browser

$(STAMP): pyproject.toml setup.py matcher/crypto/_h2c_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n auto

# Best effort: the console's browser test drives Debian's headless Chromium; without it that test is skipped.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver (apt) for the console's browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null) \
		|| echo "browser: apt-get could not install chromium; the console's browser test will be skipped"; \
	else echo "browser: no /usr/bin/chromium and no root apt-get to install it; the console's browser test will be skipped"; \
	fi

demo: $(STAMP)
	$(BIN)/python -m demo.run

bench: $(STAMP)
	$(BIN)/python -m bench.micro

protos: $(STAMP)
	$(BIN)/python -m matcher._protos

clean:
	rm -rf $(VENV) build *.egg-info demo-out
	find matcher -name "*.so" -delete

# Two commands do all the set-up on a fresh Debian machine with Python 3.11+:
#   make run   - venv, install, migrate, start the daemon on the embedded default (SQLite, maildir)
#   make test  - install what the tests need, start the real servers they use, run everything

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: run test install lint unit db-upgrade system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

db-upgrade: $(STAMP)
	$(VENV)/bin/gateway --config config/gateway.toml db upgrade

run: $(STAMP) db-upgrade
	$(VENV)/bin/gateway --config config/gateway.toml run

# Debian's dovecot-imapd, swaks and postfix (smtp-source/smtp-sink) for the tests that talk
# to real servers, and chromium for the portal's browser tests (Playwright drives it; it is
# never downloaded by Playwright itself); installed when missing and we are root. Package
# scripts may not start daemons (policy-rc.d), and Postfix gets no system configuration.
system-deps:
	@if command -v dovecot >/dev/null && command -v swaks >/dev/null && command -v smtp-sink >/dev/null \
	    && [ -x /usr/bin/chromium ]; then \
	  echo "system tools present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  [ -x /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    dovecot-imapd swaks postfix libnet-ssleay-perl libio-socket-ssl-perl chromium fonts-liberation >/dev/null; \
	else \
	  echo "WARNING: dovecot/swaks/postfix/chromium missing and not root: the tests that need them will say so"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway store tests bench
	$(VENV)/bin/mypy gateway store

test: $(STAMP) system-deps lint
	bash tests/run.sh

bench: $(STAMP)
	$(PY) bench/ingest.py --n 1000

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

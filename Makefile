# Tollgate: `make run` serves the demo, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# Default: answer from the built-in offline provider. OFFLINE=0 keeps the
# real upstreams of catalog/default.toml (their secrets must be set).
OFFLINE ?= 1
CATALOGS := catalog/default.toml $(if $(filter 1,$(OFFLINE)),catalog/offline.toml)
# Starts an embedded PostgreSQL (`run`; `test` adds Redis) for what DATABASE_URL /
# REDIS_URL leave unset, runs the command after --, then stops them.
SERVICES := $(BIN)/python devservices.py

.PHONY: run serve test lint browser install bench bench-ledger profile soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(SERVICES) run -- $(MAKE) --no-print-directory serve

# `run` without starting anything: against the DATABASE_URL you set.
serve: $(STAMP)
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py loadcatalog $(CATALOGS)
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python manage.py demo
	$(BIN)/uvicorn portal.asgi:application --host $(HOST) --port $(PORT) --no-access-log --no-proxy-headers

# The production process set, locally: web ×WEB_CONCURRENCY, Celery's worker, events and beat (the
# Procfile), against the DATABASE_URL, REDIS_URL and CELERY_BROKER_URL you set.
WEB_CONCURRENCY ?= 2
prod: $(STAMP)
	@test -n "$$DATABASE_URL" -a -n "$$REDIS_URL" -a -n "$$SECRET_KEY" || { \
		echo "make prod needs DATABASE_URL (PostgreSQL), REDIS_URL, SECRET_KEY, and CELERY_BROKER_URL"; \
		echo "(Redis or RabbitMQ; default REDIS_URL). See the README's \"Running in production\"."; exit 2; }
	mkdir -p .tollgate
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py loadcatalog --if-empty $${CATALOG:-catalog/default.toml}
	$(BIN)/python manage.py collectstatic --no-input -v0
	@echo "Tollgate (production set) serving http://$(HOST):$(PORT)/ with $(WEB_CONCURRENCY) web processes"
	@# The web processes and the worker write their metrics to one directory, emptied here
	@# so a previous run's processes are not summed in.
	metrics="$${PROMETHEUS_MULTIPROC_DIR:-$(CURDIR)/.tollgate/metrics}"; \
	mkdir -p "$$metrics" && rm -f "$$metrics"/*.db; \
	PATH="$(CURDIR)/$(BIN):$$PATH" DEBUG=false TOLLGATE_PLAIN_HTTP=$${TOLLGATE_PLAIN_HTTP:-1} \
		HOST=$(HOST) WEB_CONCURRENCY=$(WEB_CONCURRENCY) PROMETHEUS_MULTIPROC_DIR="$$metrics" \
		$(BIN)/honcho start --no-prefix -f Procfile -p $(PORT) web worker events beat

test: lint browser
	$(SERVICES) test -- $(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian's chromium for the browser tests (tests/e2e); nothing to do once installed.
browser:
	bash tests/e2e/chromium.sh

# Style, imports and line length (ruff), strict types for the money modules (mypy).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The benchmark makes its own database (BENCH_DATABASE_URL) next to DATABASE_URL's.
bench: $(STAMP)
	$(SERVICES) test --durable -- sh -c 'BENCH_DATABASE_URL="$${BENCH_DATABASE_URL:-$${DATABASE_URL%/*}/tollgate_bench}" \
		exec $(BIN)/python -m bench.harness'

# The ledger at scale (bench/ledger_scale.py): 10,000,000 rows (BENCH_ROWS) loaded once through
# COPY into their own database, then reports, the ledger list and closemonth timed. Minutes.
bench-ledger: $(STAMP)
	$(SERVICES) test --durable -- sh -c 'BENCH_DATABASE_URL="$${BENCH_DATABASE_URL:-$${DATABASE_URL%/*}/tollgate_ledger10m}" \
		exec $(BIN)/python -m bench.ledger_scale'

# A bounded soak (10 minutes; BENCH_SOAK_S to change): mixed load, an upstream failing 10% of
# the time; checks memory, 5xx and ledger == calls (bench/soak.py). Not part of `make test`.
# Where one worker's time goes under load: py-spy's top frames (BENCH_PROFILE_KIND=json|stream).
profile: $(STAMP)
	$(SERVICES) test --durable -- sh -c 'BENCH_DATABASE_URL="$${BENCH_DATABASE_URL:-$${DATABASE_URL%/*}/tollgate_bench}" \
		exec $(BIN)/python -m bench.profile'

soak: $(STAMP)
	$(SERVICES) test --durable -- sh -c 'BENCH_DATABASE_URL="$${BENCH_DATABASE_URL:-$${DATABASE_URL%/*}/tollgate_bench}" \
		exec $(BIN)/python -m bench.soak'

clean:
	rm -rf $(VENV) staticfiles

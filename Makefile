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

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/tollgate
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py loadcatalog $(CATALOGS)
	$(BIN)/python manage.py demo
	$(BIN)/uvicorn portal.asgi:application --host $(HOST) --port $(PORT) --no-access-log

test: $(STAMP)
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.proxy_overhead

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles

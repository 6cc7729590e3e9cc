# The Tollgate image: one image for web, worker and beat (compose.yaml, the Procfile).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBUG=false
WORKDIR /app
COPY . .
# Editable, so the code runs from /app, where the templates, static files and catalog are.
RUN pip install --no-cache-dir -e . && DATABASE_URL=postgres://build/none SECRET_KEY=build-only \
    DEBUG=true python manage.py collectstatic --no-input -v0 && useradd --system --home /app tollgate \
    && mkdir -p /app/.tollgate && chown tollgate /app/.tollgate
USER tollgate
EXPOSE 8000
# X-Forwarded-For is believed only from FORWARDED_ALLOW_IPS (your proxy), never from anyone:
# sign-in throttling counts the address it names. Multiprocess metrics need a shared folder.
ENV FORWARDED_ALLOW_IPS=127.0.0.1 PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus WEB_CONCURRENCY=2
CMD ["sh", "-c", "mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec uvicorn portal.asgi:application --host 0.0.0.0 --port 8000 --workers \"$WEB_CONCURRENCY\" --log-config portal/uvicorn-logging.json --timeout-graceful-shutdown \"${TOLLGATE_SHUTDOWN_GRACE_S:-30}\" --no-access-log --proxy-headers --forwarded-allow-ips \"$FORWARDED_ALLOW_IPS\""]

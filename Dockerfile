# The Tollgate image: one image for web, worker and beat (compose.yaml, the Procfile).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBUG=false
WORKDIR /app
COPY . .
# Editable, so the code runs from /app, where the templates, static files and catalog are.
RUN pip install --no-cache-dir -e . && useradd --system --home /app tollgate \
    && mkdir -p /app/.tollgate && chown tollgate /app/.tollgate
USER tollgate
EXPOSE 8000
CMD ["uvicorn", "portal.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-access-log", "--proxy-headers", "--forwarded-allow-ips", "*"]

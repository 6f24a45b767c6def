FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MISP_ENRICH_HOST=0.0.0.0 \
    MISP_ENRICH_PORT=6666 \
    MISP_ENRICH_CACHE_PATH=/var/cache/misp-enrich/cache.sqlite3

RUN useradd --system --create-home --home-dir /home/misp-enrich misp-enrich \
    && mkdir -p /var/cache/misp-enrich \
    && chown misp-enrich /var/cache/misp-enrich

WORKDIR /app
COPY pyproject.toml README.md ./
COPY modules ./modules
COPY expansion ./expansion
RUN pip install .

USER misp-enrich
EXPOSE 6666
VOLUME ["/var/cache/misp-enrich"]

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthcheck' % os.environ['MISP_ENRICH_PORT'], timeout=2)"

CMD ["misp-enrich", "serve"]

# dicom-db: the ingest CLI and the GraphQL API in one image.
#   docker build -t dicom-db .
#   docker run --rm -v /data/dicom:/dicom:ro -v dicomdb:/db dicom-db dicom-ingest /dicom --db sqlite:////db/dicom.db
#   TOKEN=$(openssl rand -hex 24); echo "your token: $TOKEN"      # keep it: the server never shows it
#   docker run --rm -p 8000:8000 -v dicomdb:/db -e DICOM_API_TOKENS="$TOKEN:full:me" dicom-db
#   curl -s localhost:8000/graphql -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
#        -d '{"query": "{ allStudies { totalCount } }"}'
# In a browser, http://localhost:8000/ (the study browser) asks for the token; GraphiQL (/graphql) needs the
# header from an extension (docs/api.md, "Access").
# The API listens on 0.0.0.0 inside the container, so it refuses to start without tokens unless
# DICOM_API_ALLOW_UNAUTHENTICATED_REMOTE=1 says that an open API is intended (docs/api.md, "Access").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DATABASE_URL=sqlite:////db/dicom.db
WORKDIR /app
COPY pyproject.toml README.md schema.sql ./
COPY ingest ./ingest
COPY api ./api
COPY model ./model
# A plain install: the package (dicom_db, with schema.sql and the GraphiQL assets as package data) goes to
# site-packages, and the sources are removed so that nothing reads them from /app.
RUN pip install . && rm -rf /app/* && useradd --system --uid 10001 dicomdb && mkdir /db && chown dicomdb /db
USER dicomdb
VOLUME ["/db"]
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["dicom-api", "--host", "0.0.0.0", "--port", "8000"]

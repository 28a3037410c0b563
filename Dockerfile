# hub's production image: gunicorn for the web, `hub worker` for the scheduler (see docker-compose.yml).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 hub
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
RUN pip install -e .
USER hub
EXPOSE 5000
CMD ["gunicorn", "--workers", "2", "--threads", "4", "--bind", "0.0.0.0:5000", "hub:create_app()"]

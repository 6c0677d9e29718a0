# syntax=docker/dockerfile:1
# Warta image: one image, four roles (`warta api` by default; `worker`, `mta`, `migrate`).

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY campaigns ./campaigns
COPY workers ./workers
COPY migrations ./migrations
# A regular (non-editable) install: the runtime stage needs only /opt/venv.
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WARTA_API_HOST=0.0.0.0
RUN groupadd --system --gid 10001 warta \
    && useradd --system --uid 10001 --gid warta --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin warta
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY alembic.ini ./
COPY migrations ./migrations
# var/ holds the MTA spool, the capture Maildir and DKIM keys; a volume mounted
# here starts out owned by warta.
RUN mkdir var && chown warta:warta var
USER warta
EXPOSE 8000 2525 2587
CMD ["warta", "api"]

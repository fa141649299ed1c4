# One image for every role: `dkt server`, `dkt agent`, `dkt launch` (and `dkt run`).
#   docker build -t dkt .
#   docker run --rm dkt --help
# The torch wheels are PyPI's default build (CUDA-capable on x86-64), so the same
# image trains on a GPU host when the container is given one (docker-compose.gpu.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

# nginx: `dkt server` puts it in front of the SuperLink beyond loopback (the Control API
# only for operators' client certificates; docs/explanation/security.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

# Layers from the least to the most often changed: torch, then the other dependencies
# (rebuilt only when pyproject.toml changes), then the code.
RUN pip install torch==2.14.1 torchvision==0.29.1

WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . && rm -rf build dkt.egg-info

# Non-root; /data is created here so that a named volume mounted on it starts out
# owned by this user (Docker copies the mount point's ownership into a new volume).
# The same for the mount points of the startup kits' volumes (docker-compose.yml).
RUN useradd --create-home --uid 1000 dkt \
    && mkdir -p /data /kits/server /kits/operator /kits/ca \
       /kits/agent-0 /kits/agent-1 /kits/agent-2 \
    && chown -R dkt:dkt /data /kits
USER dkt
WORKDIR /home/dkt

# SuperLink (Flower), relay gRPC, relay status HTTP (/status, /healthz, /metrics).
EXPOSE 8000 7470 7471

ENTRYPOINT ["dkt"]
CMD ["--help"]

# deepscope-server, CPU image. The install steps are the README's (same constraints file).
# GPU variant: build with  --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
# onnxruntime-gpu then uses the CUDA provider and torch uses CUDA (--device auto picks them up).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN (command -v python3.11 || (apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
     && rm -rf /var/lib/apt/lists/*)) && python3.11 -m venv /opt/deepscope
ENV PATH=/opt/deepscope/bin:$PATH
WORKDIR /src
COPY constraints.txt ./
RUN pip install -c constraints.txt --index-url ${TORCH_INDEX} --extra-index-url https://pypi.org/simple torch==2.13.0
COPY client ./client
COPY server ./server
COPY plugins ./plugins
RUN pip install -c constraints.txt ./client ./server ./plugins
RUN useradd --create-home deepscope && mkdir -p /data/store /models && chown -R deepscope /data /models
USER deepscope
EXPOSE 50051
# Binding 0.0.0.0 needs a token: mount one and pass --auth-token-file (or --allow-unauthenticated on a trusted network).
ENTRYPOINT ["deepscope-server", "--host", "0.0.0.0", "--port", "50051", "--store", "/data/store", "--model-dir", "/models"]
CMD ["--auth-token-file", "/run/secrets/deepscope_token"]

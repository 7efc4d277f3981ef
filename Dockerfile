# The challenge container: MT2 inference (app/, weights/, predict.sh) on ONNX Runtime, without torch.
#
#   docker build -t mt2 .
#   docker run --gpus all -v "$PWD/in:/workspace/inputs" -v "$PWD/out:/workspace/outputs" mt2 predict.sh
#
# The default base suits the onnxruntime-gpu wheel pinned in requirements.txt (built against CUDA 13.0 and
# cuDNN 9). Any Debian or Ubuntu image works as a base for CPU-only use (BASE_IMAGE build argument); Python
# and venv are installed only when the base lacks them. See docs/CONTAINER.md.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG APP_USER=mt2
ARG APP_UID=10001

ENV DEBIAN_FRONTEND=noninteractive \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MT2_USER=${APP_USER}

# Python with venv (PEP 668 bases refuse system-wide pip installs), the unprivileged user, and setpriv,
# which the entry point uses to drop root.
RUN set -eu; \
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv "$VIRTUAL_ENV"; \
    command -v setpriv >/dev/null; \
    useradd --create-home --no-log-init --uid "$APP_UID" --user-group "$APP_USER"

# Third-party packages first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-input -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && find "$VIRTUAL_ENV" -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +

# The model, then the code (changes most often). Byte-code is compiled here because a fresh container
# per image could never reuse a cache written at run time.
COPY weights/ /workspace/weights/
COPY app/ /workspace/app/
COPY predict.sh /workspace/predict.sh
COPY docker/entrypoint.sh /usr/local/bin/mt2-entrypoint
RUN set -eu; \
    python3 -m compileall -q /workspace/app; \
    chmod 0755 /workspace/predict.sh /usr/local/bin/mt2-entrypoint; \
    ln -sf /workspace/predict.sh /usr/local/bin/predict.sh; \
    mkdir -p /workspace/inputs /workspace/outputs; \
    chown "$APP_USER:$APP_USER" /workspace/inputs /workspace/outputs

WORKDIR /workspace
# The entry point starts as root only to pick the unprivileged user that can write the output folder,
# then runs the command as that user (docs/CONTAINER.md, "Users and the output folder").
ENTRYPOINT ["/usr/local/bin/mt2-entrypoint"]
CMD ["predict.sh"]

# archsearch image: the coordinator and the worker are the same image, different commands.
# Build arguments choose the torch build:
#   CPU (laptops, the coordinator):  --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   CUDA (GPU workers):              --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"

WORKDIR /app
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"

COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY search_space search_space
COPY service service
COPY workers workers
COPY client client
COPY protocol protocol
COPY archsearch archsearch
COPY migrations migrations
RUN pip install --no-cache-dir -c constraints.txt .

ENV ARCHSEARCH_HOST=0.0.0.0 \
    ARCHSEARCH_PORT=8000 \
    ARCHSEARCH_DATA_DIR=/data \
    ARCHSEARCH_WORKER_DATA_DIR=/data/worker
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["archsearch"]
CMD ["serve"]

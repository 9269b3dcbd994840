# The demo's Python services for envoy/docker-compose.yaml (build context: the repository): only
# the packages they run with (envoy/requirements.txt), not the tests' (Envoy's wheel, pytest).
FROM python:3.11.7-slim-bookworm
COPY envoy/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

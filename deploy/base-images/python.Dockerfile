# Stand-in for python:3.11-slim where no registry is reachable (scripts/make_base_images.sh builds it
# on deepserve-local/debian:bookworm, a debootstrap of Debian 12 that trusts the build host's CA bundle).
# Debian's Python 3.11 laid out where the official image has it: /usr/local/bin/python, python3, pip,
# pip3 on PATH. /usr/local is a virtual environment over /usr/bin/python3.11, so `pip install` there
# is allowed (no "externally managed" refusal, PEP 668 covers only the system interpreter) and
# `python -m venv` works (python3-venv brings ensurepip). Debian's pip verifies TLS against
# /etc/ssl/certs/ca-certificates.crt, the bundle the base image carries.
ARG BASE=deepserve-local/debian:bookworm
FROM ${BASE}
# The Debian archive keeps only the newest build of a package (security updates replace it), so exact
# pins would break the build; the stand-in is remade from the archive of the day when missing.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && python3 -m venv /usr/local \
    && /usr/local/bin/python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version"
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
CMD ["python3"]

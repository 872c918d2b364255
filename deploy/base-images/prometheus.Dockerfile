# Stand-in for prom/prometheus where no registry is reachable (scripts/make_base_images.sh builds it on
# deepserve-local/debian:bookworm). Debian's prometheus package (2.42) with the official image's layout:
# entrypoint /bin/prometheus, configuration /etc/prometheus/prometheus.yml, storage /prometheus owned
# by nobody (65534), console templates in /usr/share/prometheus, user nobody, the official default
# arguments, and wget for docker-compose.yml's healthcheck (the official image has busybox's).
ARG BASE=deepserve-local/debian:bookworm
FROM ${BASE}
# The Debian archive keeps only the newest build of a package (security updates replace it), so exact
# pins would break the build; the stand-in is remade from the archive of the day when missing.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && mkdir -p /usr/share/prometheus /prometheus \
    && mv /etc/prometheus/console_libraries /etc/prometheus/consoles /usr/share/prometheus/ \
    && chown -R 65534:65534 /etc/prometheus /prometheus \
    && test "$(id -u nobody)" = 65534 \
    && /bin/prometheus --version
# Numeric: the official image runs as nobody, 65534:65534.
USER 65534:65534
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", \
     "--storage.tsdb.path=/prometheus", \
     "--web.console.libraries=/usr/share/prometheus/console_libraries", \
     "--web.console.templates=/usr/share/prometheus/consoles"]

# A stand-in for docker.io/library/postgres:15-bookworm on a machine with no
# registry (deploy/base-images.sh): Debian bookworm's postgresql-15, with the
# part of the official image's interface compose.yaml uses: POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB on first start, data in
# /var/lib/postgresql/data, pg_isready, port 5432, password logins from the network.
FROM localhost/sanjai-local/postgres-rootfs:15
# The package's own cluster (15/main) is not used: the entry point makes one in PGDATA.
RUN rm -rf /var/lib/postgresql/15 /etc/postgresql/15 \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]

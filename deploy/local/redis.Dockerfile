# A stand-in for docker.io/library/redis:7-bookworm on a machine with no
# registry (deploy/base-images.sh): Debian bookworm's redis-server, with the
# part of the official image's interface compose.yaml uses: `redis-server ARGS`
# run as the redis user in /data, redis-cli, port 6379.
FROM localhost/sanjai-local/redis-rootfs:7
RUN mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
VOLUME /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]

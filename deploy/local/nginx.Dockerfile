# A stand-in for docker.io/library/nginx:stable-bookworm on a machine with no
# registry (deploy/base-images.sh): Debian bookworm's nginx-light, with the part
# of the official image's interface compose.replicas.yaml uses: `nginx -g
# 'daemon off;'` reading /etc/nginx/nginx.conf (mounted from deploy/nginx.conf),
# logs to the container's output.
FROM localhost/sanjai-local/nginx-rootfs:bookworm
RUN rm -f /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]

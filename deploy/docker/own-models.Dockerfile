# Your own models baked into an image (README "Run with Docker Compose"): the build context
# is a models directory that `encoder-serve export` or `finetune` wrote; its models join the
# image's own (same name: yours wins).
#   docker build -f deploy/docker/own-models.Dockerfile -t my-encoder-serve path/to/models
ARG BASE=encoder-serve:0.1.0
FROM ${BASE}
# Owned by root and read-only to the server user, like the image's own models.
USER root
COPY . /srv/encoder-serve/models/
RUN chmod -R a+rX,go-w /srv/encoder-serve/models
USER 10001:10001

# One image for the operator and the agents (`agentflow operator` /
# `agentflow agent`). Build: docker build -t ghcr.io/agentflow/agentflow:0.1.0 .
# The working directory is /app, where the examples live, so the example
# pool's `--handlers=deploy/examples/agents/research-handlers.mjs` resolves.
#
# BASE_IMAGE: any Debian bookworm with Node 24 and npm on PATH. The test harness
# builds this file on its own base, made from Debian's packages and the Node
# binary of the npm package the project installs (test/cluster/node-images.ts),
# with buildah: buildah bud --build-arg BASE_IMAGE=localhost/agentflow-node-base:bookworm
ARG BASE_IMAGE=node:24-bookworm-slim

FROM ${BASE_IMAGE} AS build
# Extra CAs for npm ci behind a TLS-inspecting proxy (a file mounted into the build, e.g.
# buildah bud --volume /etc/ssl/certs/ca-certificates.crt:/run/extra-ca.crt:ro
#   --build-arg NODE_EXTRA_CA_CERTS=/run/extra-ca.crt). Build stage only: the image does not keep it.
ARG NODE_EXTRA_CA_CERTS
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# The web UI (ui/dist), bundled by esbuild from ui/src; the operator serves it.
COPY ui ./ui
RUN npx tsc -p tsconfig.build.json \
 && node ui/build.ts \
 && npm prune --omit=dev --ignore-scripts

FROM ${BASE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/ui/dist ./ui/dist
COPY package.json ./
# The sources too: package.json's bin and exports ("agentflow/agent", for handler
# modules) point at them, and Node 24 runs TypeScript as it is.
COPY bin ./bin
COPY src ./src
COPY proto ./proto
COPY deploy/examples ./deploy/examples
# The distroless "nonroot" uid; the chart runs it with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["--help"]

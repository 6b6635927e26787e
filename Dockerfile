# One image for the operator and the agents (`agentflow operator` /
# `agentflow agent`). Build: docker build -t ghcr.io/agentflow/agentflow:0.1.0 .
# The working directory is /app, where the examples live, so the example
# pool's `--handlers=deploy/examples/agents/research-handlers.mjs` resolves.

FROM node:24-bookworm-slim AS build
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

FROM node:24-bookworm-slim
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

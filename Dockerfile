# counter-mesh: one image for the coordinator and the counters; the command picks the role
# (docker-compose.yml runs `coordinator` and `counter`). TypeScript runs through tsx, no build step.
FROM node:20-slim

WORKDIR /app

# tsx (a devDependency) is needed at run time, so install everything the lockfile names
# (NODE_ENV=production here would make npm ci skip it).
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund && npm cache clean --force

COPY . .

# /data is where compose mounts each counter's volume; owned by the unprivileged user so the
# named volume is created writable for it.
RUN mkdir -p /data && chown node:node /data
USER node

ENTRYPOINT ["node", "--import", "tsx", "src/cli/main.ts"]
CMD ["--help"]

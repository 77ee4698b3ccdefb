# A synth host: sshd, jackd2, csound, jacktrip and `orchestra-agent`.
# Same package list as scripts/setup.sh and .ci/run.
#   docker build -t cloud-orchestra-host .
#   docker run -d -p 2222:22 -e AUTHORIZED_KEY="$(cat ~/.ssh/id_ed25519.pub)" cloud-orchestra-host
FROM rust:1-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq libjack-jackd2-dev pkg-config >/dev/null
WORKDIR /src
COPY . .
RUN cargo build --release --bin orchestra-agent

FROM debian:bookworm-slim
COPY scripts/packages.txt /tmp/packages.txt
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(grep -v '^#' /tmp/packages.txt | xargs) >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/sshd \
 && useradd -m -s /bin/bash orchestra
COPY --from=build /src/target/release/orchestra-agent /usr/local/bin/orchestra-agent
# Where a controller on another CPU looks for an agent binary it cannot upload.
RUN mkdir -p /home/orchestra/.cloud-orchestra/bin \
 && ln -s /usr/local/bin/orchestra-agent "/home/orchestra/.cloud-orchestra/bin/orchestra-agent-$(orchestra-agent --version | cut -d' ' -f2)" \
 && chown -R orchestra /home/orchestra/.cloud-orchestra
# Key-only logins; the public key comes from the AUTHORIZED_KEY environment variable.
RUN printf 'PasswordAuthentication no\nPermitRootLogin no\n' > /etc/ssh/sshd_config.d/orchestra.conf
EXPOSE 22
CMD ["sh", "-c", "mkdir -p /home/orchestra/.ssh && echo \"$AUTHORIZED_KEY\" > /home/orchestra/.ssh/authorized_keys && chown -R orchestra /home/orchestra/.ssh && chmod 700 /home/orchestra/.ssh && chmod 600 /home/orchestra/.ssh/authorized_keys && exec /usr/sbin/sshd -D -e"]

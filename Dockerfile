# Lanterne agent image: build the wheel (with the optional C scan loop), run unprivileged.
# docker run --cap-add=NET_RAW --net=host -v lanterne:/var/lib/lanterne lanterne run --config /etc/lanterne/lanterne.toml
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent agent
COPY collectors collectors
COPY fingerprints fingerprints
COPY store store
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# libpcap compiles the kernel capture filter at start (collectors/_bpf.py).
RUN apt-get update && apt-get install -y --no-install-recommends libcap2-bin libpcap0.8 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/lanterne --create-home --shell /usr/sbin/nologin lanterne
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    # Raw sockets for live capture without root: the capability on the interpreter only.
    && setcap cap_net_raw+ep "$(readlink -f /usr/local/bin/python3)"
USER lanterne
WORKDIR /var/lib/lanterne
ENV LANTERNE_DB=sqlite:////var/lib/lanterne/lanterne.db \
    LANTERNE_CONFIG=/etc/lanterne/lanterne.toml
ENTRYPOINT ["lanterne"]
CMD ["--help"]

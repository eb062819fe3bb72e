"""Service settings: from `facenas serve` flags, a YAML file (`configs/serve/*.yaml`) and environment variables.

Validated at start, so that a bad setting stops the service with one clear line instead of failing a request.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOOPBACK = ("127.0.0.1", "::1", "localhost")
Exposure = Literal["open", "guarded", "off"]


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(..., description="recognition ONNX file (insightface's contract)")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="worker processes on the one port (uvicorn's workers): each "
                         "loads the model and follows the shared gallery's changes; a worker that dies is restarted. "
                         "/metrics counts every worker's requests; rate limits are per worker")
    db: str = Field("runs/serve/gallery.sqlite", description="SQLite gallery of subjects and their faces (its folder "
                                                           "is created at start)")
    threshold: Optional[float] = Field(None, ge=-1, le=1, description="cosine threshold of both verification and "
                                                                      "identification, unless their own is set")
    verify_threshold: Optional[float] = Field(None, ge=-1, le=1, description="cosine threshold of /v1/verify")
    identify_threshold: Optional[float] = Field(None, ge=-1, le=1, description="cosine threshold of /v1/identify")
    verify_far: Optional[float] = Field(None, gt=0, lt=1, description="verify at the model card's operating point "
                                        "for this false-accept rate (default: the card's best-accuracy threshold)")
    identify_far: Optional[float] = Field(None, gt=0, lt=1, description="identify at the card's operating point for "
                                          "this false-accept rate per comparison (default: the lowest FAR the card "
                                          "records)")
    api_keys_file: Optional[str] = Field(None, description="file with one API key per line (# comments)")
    api_keys_env: str = Field("FACENAS_API_KEYS", description="environment variable with comma-separated keys")
    rate_limit_per_minute: int = Field(120, ge=0, description="requests per minute per key, or per client address "
                                                            "without keys (0: unlimited)")
    allow_anonymous: bool = Field(False, description="serve clients without API keys on a non-loopback address or "
                                                     "behind trusted proxies (refused at start otherwise)")
    forwarded_allow_ips: Optional[str] = Field(None, description="comma-separated addresses or networks (CIDR) of "
                                               "trusted reverse proxies whose X-Forwarded-For gives the client "
                                               "address; '*' trusts every peer. None: forwarded headers ignored")
    metrics: Exposure = Field("guarded", description="/metrics: open, guarded (the /v1 rule: an API key, or a "
                                                     "loopback client without keys) or off")
    docs: Exposure = Field("guarded", description="/docs, /redoc and /openapi.json: open, guarded or off")
    max_upload_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="largest request body accepted")
    max_pixels: int = Field(25_000_000, ge=1024, description="largest decoded image (width x height)")
    min_side: int = Field(16, ge=1, description="smallest image side accepted")
    detector: str = Field("mtcnn", description="'mtcnn' (MTCNN with its shipped weights: box and five landmarks), "
                                               "'haar' (OpenCV's bundled cascade: boxes only, the last resort), "
                                               "OpenCV's YuNet ONNX (face_detection_yunet_2023mar.onnx) or "
                                               "insightface's SCRFD ONNX (needs the insightface package)")
    detector_kind: Literal["auto", "yunet", "scrfd"] = Field("auto", description="the detector ONNX's kind; auto: "
                                                             "told from its outputs")
    detector_score: float = Field(0.5, gt=0, le=1, description="smallest detection score taken as a face")
    detector_max_side: int = Field(640, ge=64, description="photos are downscaled to this side for detection")
    top_k: int = Field(5, ge=1, le=100, description="default number of candidates from /v1/identify")
    batch_max_faces: int = Field(32, ge=1, le=1024, description="most faces in one model call (dynamic batching of "
                                                                "concurrent requests)")
    batch_wait_ms: float = Field(2.0, ge=0, le=100, description="longest wait for more faces while a batch is short")
    onnx_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads (0: one per core, shared out "
                                                  "among the workers)")
    decode_threads: int = Field(0, ge=0, le=64, description="threads decoding and aligning uploads (0: cores + 2, "
                                                            "at most 8)")
    faiss_min_faces: Optional[int] = Field(None, ge=1, description="rank the gallery with faiss (if installed) from "
                                           "this size on; None: the matrix (measured faster: bench/gallery_scale.py)")

    @model_validator(mode="after")
    def _paths(self) -> "ServeSettings":
        if not Path(self.model).is_file():
            raise ValueError(f"model file {self.model} does not exist")
        if self.api_keys_file and not Path(self.api_keys_file).is_file():
            raise ValueError(f"API keys file {self.api_keys_file} does not exist")
        if self.detector not in ("mtcnn", "haar") and not Path(self.detector).is_file():
            raise ValueError(f"detector {self.detector!r} is neither 'mtcnn', 'haar' nor an existing ONNX file")
        return self

    @model_validator(mode="after")
    def _one_rule_per_job(self) -> "ServeSettings":
        for job in ("verify", "identify"):
            if getattr(self, f"{job}_threshold") is not None and getattr(self, f"{job}_far") is not None:
                raise ValueError(f"give {job}_threshold or {job}_far, not both")
        return self

    @model_validator(mode="after")
    def _proxies(self) -> "ServeSettings":
        if self.forwarded_allow_ips is not None:
            for item in self.proxy_networks:
                if item == "*":
                    continue
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"forwarded_allow_ips: {item!r} is neither an IP address, a network such as "
                                     "10.0.0.0/8, nor '*'") from None
        return self

    @property
    def proxy_networks(self) -> list[str]:
        return [item.strip() for item in (self.forwarded_allow_ips or "").split(",") if item.strip()]

    @property
    def loopback_bind(self) -> bool:
        return self.host in LOOPBACK


class ServeFile(BaseModel):
    """What `facenas serve --config` reads (through `facenas.config.load_config`, so `base:` files, flags as dotted
    `serve.*` overrides and unknown-key errors work as for every other config): one top-level `serve:` mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    serve: ServeSettings

    @model_validator(mode="before")
    @classmethod
    def _has_model(cls, data: Any) -> Any:
        if not isinstance(data, dict) or set(data) - {"serve"}:
            return data  # a misspelt `serve:` is better reported as the unknown key it is
        section = data.get("serve")
        if section is None or (isinstance(section, dict) and "model" not in section):
            raise ValueError("no model: give --model (a recognition ONNX file) or set serve.model in the config")
        return data

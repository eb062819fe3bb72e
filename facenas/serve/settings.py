"""Service settings: from `facenas serve` flags, a YAML file (`configs/serve/*.yaml`) and environment variables.

Validated at start, so that a bad setting stops the service with one clear line instead of failing a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(..., description="recognition ONNX file (insightface's contract)")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=1, le=65535)
    db: str = Field("runs/serve/gallery.sqlite", description="SQLite gallery of subjects and their faces (its folder "
                                                           "is created at start)")
    threshold: Optional[float] = Field(None, ge=-1, le=1, description="cosine threshold; default: the model "
                                                                      "card's (required without a card)")
    api_keys_file: Optional[str] = Field(None, description="file with one API key per line (# comments)")
    api_keys_env: str = Field("FACENAS_API_KEYS", description="environment variable with comma-separated keys")
    rate_limit_per_minute: int = Field(120, ge=0, description="requests per minute per key (0: unlimited)")
    max_upload_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="largest request body accepted")
    max_pixels: int = Field(25_000_000, ge=1024, description="largest decoded image (width x height)")
    min_side: int = Field(16, ge=1, description="smallest image side accepted")
    detector: str = Field("haar", description="'haar' (OpenCV's bundled cascade) or a detector ONNX such as "
                                              "insightface's SCRFD")
    detector_max_side: int = Field(640, ge=64, description="photos are downscaled to this side for detection")
    top_k: int = Field(5, ge=1, le=100, description="default number of candidates from /v1/identify")
    faiss_min_faces: int = Field(50_000, ge=1, description="use faiss (if installed) from this gallery size on")

    @model_validator(mode="after")
    def _paths(self) -> "ServeSettings":
        if not Path(self.model).is_file():
            raise ValueError(f"model file {self.model} does not exist")
        if self.api_keys_file and not Path(self.api_keys_file).is_file():
            raise ValueError(f"API keys file {self.api_keys_file} does not exist")
        if self.detector != "haar" and not Path(self.detector).is_file():
            raise ValueError(f"detector {self.detector!r} is neither 'haar' nor an existing ONNX file")
        return self

    @property
    def local_only(self) -> bool:
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

"""Request and response bodies of the service (one model per direction; embeddings of the gallery never leave)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(..., examples=["no_face_found"])
    message: str
    field: Optional[str] = Field(None, examples=["image2"], description="the upload or form field at fault, where "
                                 "there is one: image, image1, image2, files[i] (0-based), landmarks")


class ErrorBody(BaseModel):
    error: ErrorDetail


class FaceInfo(BaseModel):
    box: Optional[list[int]] = Field(None, description="x, y, width, height of the face in the upload")
    aligned: str = Field(..., description="crop, landmarks, detected-landmarks or detected-box")


class Embedding(FaceInfo):
    embedding: list[float]


class EmbedResponse(BaseModel):
    model: str = Field(..., description="sha256 of the ONNX model that made the embeddings")
    embeddings: list[Embedding]


class VerifyResponse(BaseModel):
    similarity: float = Field(..., description="cosine similarity of the two faces' embeddings")
    same_person: bool
    threshold: float
    threshold_source: str
    faces: list[FaceInfo]


class SubjectCreate(BaseModel):
    id: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    name: Optional[str] = Field(None, max_length=200)


class Subject(BaseModel):
    id: str
    name: str
    faces: int


class SubjectList(BaseModel):
    subjects: list[Subject]


class EnrolResponse(BaseModel):
    subject: str
    face_ids: list[int]
    faces: list[FaceInfo]


class Candidate(BaseModel):
    subject: str
    similarity: float


class IdentifyResponse(BaseModel):
    subject: Optional[str] = Field(None, description="the best subject at or above the threshold, else null")
    unknown: bool
    candidates: list[Candidate]
    threshold: float
    face: FaceInfo


class ModelInfo(BaseModel):
    model_sha256: str
    embedding_size: int
    threshold: float
    threshold_source: str
    card: Optional[dict] = None

"""Request and response bodies of the service (one model per direction; embeddings of the gallery never leave)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(..., examples=["no_face_found"])
    message: str
    field: Optional[str] = Field(None, examples=["image2"], description="the upload or form field at fault, where "
                                 "there is one: image, image1, image2, files[i] (0-based), landmarks")
    request_id: Optional[str] = Field(None, description="the request's id (also in the x-request-id header and "
                                                        "the service's log)")


class ErrorBody(BaseModel):
    error: ErrorDetail


class FaceInfo(BaseModel):
    box: Optional[list[int]] = Field(None, description="x, y, width, height of the face in the upload")
    aligned: str = Field(..., description="crop, landmarks, detected-landmarks or detected-box")
    detector: Optional[str] = Field(None, description="the detector that found the face (mtcnn, yunet, scrfd or haar); "
                                                      "null when the upload was a crop or came with landmarks")
    landmarks: Optional[list[list[float]]] = Field(None, description="the five points (x, y) the face was aligned "
                                                   "on, in the upload's pixels: the client's or the detector's")
    note: Optional[str] = Field(None, description="a caveat about this face, such as a Haar detection (unaligned)")


class Embedding(FaceInfo):
    embedding: list[float]


class EmbedResponse(BaseModel):
    model: str = Field(..., description="sha256 of the ONNX model that made the embeddings")
    embeddings: list[Embedding]


class Decided(BaseModel):
    threshold: float = Field(..., description="the cosine threshold this answer was decided at")
    threshold_source: str = Field(..., description="where it comes from: request, service setting, or the model "
                                                   "card's operating point (and the set it was chosen on)")
    far: Optional[float] = Field(None, description="the false-accept rate per comparison the threshold was chosen "
                                                   "for, where it was chosen for one")


class VerifyResponse(Decided):
    similarity: float = Field(..., description="cosine similarity of the two faces' embeddings")
    same_person: bool
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


class IdentifyResponse(Decided):
    subject: Optional[str] = Field(None, description="the best subject at or above the threshold, else null")
    unknown: bool
    candidates: list[Candidate]
    face: FaceInfo


class OperatingPointInfo(BaseModel):
    threshold: float
    source: str
    far: Optional[float] = None


class ModelInfo(BaseModel):
    model_sha256: str
    embedding_size: int
    verify: OperatingPointInfo = Field(..., description="what /v1/verify decides at")
    identify: OperatingPointInfo = Field(..., description="what /v1/identify decides at")
    card: Optional[dict] = None

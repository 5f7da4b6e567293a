"""The baseline a team would otherwise write: a Hugging Face pipeline behind FastAPI, served by uvicorn.

FITGATE_BENCH_MODEL=path/to/hf/checkpoint uvicorn bench.pipeline_server:app --port 3001
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classifier = pipeline("text-classification", model=os.environ["FITGATE_BENCH_MODEL"], device=-1)
app = FastAPI()


class Request(BaseModel):
    texts: list[str]


@app.post("/predict")
def predict(body: Request) -> dict[str, Any]:
    return {"predictions": classifier(body.texts, truncation=True)}

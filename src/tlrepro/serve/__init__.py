"""`tlrepro serve`: a REST API (FastAPI) and a web page over the saved models.

app (the app and its routes), schemas (errors and response shapes), registry (the models, the default one),
inputs (reading and decoding a request), batching (the model batcher and the bounded thread lanes), guard
(Host and Origin checks, security headers), page (the web page and the reports), server (`tlrepro serve`).
"""

"""`tlrepro serve`: a REST API (FastAPI) and a web page over the saved models; see tlrepro.serve.api."""
